//! `/api/v1/oauth/{github|gitlab}/…`: connect a user's GitHub or GitLab account so Hookline
//! can manage repository hooks for them (seed 001).
//!
//! - `GET …/authorize` (bearer token, `repos:write`): a 302 to the provider's authorize page
//!   with a signed `state` naming the user, org and provider (`?format=json` answers
//!   `{"authorize_url": …}` instead, for single-page apps that navigate themselves).
//! - `GET …/callback?code=…&state=…` (no bearer token: the provider's redirect carries none;
//!   the state, MAC'd with a server key and at most 10 minutes old, says who started it, and
//!   is accepted only with the `hookline_oauth_{provider}` cookie authorize set in the browser):
//!   exchanges the code, checks the token may manage hooks, and stores it sealed for that
//!   org and user, as `PUT /api/v1/provider-tokens/{provider}` does. The token is never
//!   returned.

use super::{method_not_allowed, not_found, query_param};
use crate::auth::{Authenticator, Scope};
use crate::clock::Clock;
use crate::connections::service::StoredProviderTokens;
use crate::connections::RepoProvider;
use crate::hooks::oauth::{OAuthApp, OAuthClient, OAuthError, OAuthState, StateError};
use crate::hooks::HookProvider;
use crate::http::{json, problem, Problem, Request, Response};
use crate::secret::Secret;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use utoipa::ToSchema;

/// `?format=json`: where to send the browser.
#[derive(Debug, serde::Serialize, ToSchema)]
struct AuthorizeUrl<'a> {
    provider: RepoProvider,
    /// The provider's authorize page, with the signed state.
    authorize_url: &'a str,
    /// Where the provider will send the browser back.
    redirect_uri: &'a str,
    /// Seconds the state stays valid.
    expires_in: u64,
}

/// The account is connected; the token itself is never returned.
#[derive(Debug, serde::Serialize, ToSchema)]
struct OAuthConnected<'a> {
    provider: RepoProvider,
    connected: bool,
    /// The scopes the provider granted.
    scopes: &'a [String],
    /// When the token expires (GitLab's last two hours and are renewed), `null` if never.
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// 503: the route needs configuration this server lacks; `missing` names the variables.
#[derive(Debug, serde::Serialize, ToSchema)]
struct NotConfigured {
    /// `oauth_not_configured`.
    error: &'static str,
    message: String,
    missing: Vec<&'static str>,
}

/// The variable holding the key that MACs OAuth states (Secrets Manager on AWS).
pub const STATE_KEY_VAR: &str = "HOOKLINE_OAUTH_STATE_KEY";
/// The shortest state key accepted, in bytes.
pub const MIN_STATE_KEY_LEN: usize = 32;
/// The local server's state key file in the data dir (when `HOOKLINE_OAUTH_STATE_KEY` is unset).
pub const LOCAL_STATE_KEY_FILE: &str = "oauth-state.key";

/// How the OAuth routes are configured.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// Where the providers' OAuth endpoints live (`GITHUB_OAUTH_URL`, `GITLAB_URL`).
    pub client: OAuthClient,
    /// `GITHUB_OAUTH_CLIENT_ID` / `GITHUB_OAUTH_CLIENT_SECRET`.
    pub github: Option<OAuthApp>,
    /// `GITLAB_OAUTH_CLIENT_ID` / `GITLAB_OAUTH_CLIENT_SECRET`.
    pub gitlab: Option<OAuthApp>,
    /// `HOOKLINE_OAUTH_STATE_KEY`; `None` answers 503 naming it.
    pub state_key: Option<Secret>,
    /// `WEBHOOK_BASE_URL`: the callback is `{base}/api/v1/oauth/{provider}/callback`. `None`:
    /// the origin the request came in on (the API's own domain on API Gateway).
    pub public_base_url: Option<String>,
    /// `HOOKLINE_OAUTH_SUCCESS_URL`: where the callback sends the browser once connected
    /// (with `?provider=…&connected=true`); `None` answers JSON.
    pub success_url: Option<String>,
    /// How old a state may be at the callback.
    pub state_max_age: Duration,
}

impl OAuthSettings {
    /// From a lookup (the environment, or Secrets Manager's values then the environment):
    /// the client ids and secrets, `HOOKLINE_OAUTH_STATE_KEY`, `HOOKLINE_OAUTH_SUCCESS_URL`,
    /// `WEBHOOK_BASE_URL`, `GITHUB_OAUTH_URL` and `GITLAB_URL`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| crate::config::present(lookup(name));
        let app = |id: &str, secret: &str| Some(OAuthApp::new(get(id)?, Secret::new(get(secret)?)));
        Self {
            client: OAuthClient::new(
                get("GITHUB_OAUTH_URL").unwrap_or_else(|| OAuthClient::DEFAULT_GITHUB_URL.into()),
                get("GITLAB_URL").unwrap_or_else(|| OAuthClient::DEFAULT_GITLAB_URL.into()),
            ),
            github: app("GITHUB_OAUTH_CLIENT_ID", "GITHUB_OAUTH_CLIENT_SECRET"),
            gitlab: app("GITLAB_OAUTH_CLIENT_ID", "GITLAB_OAUTH_CLIENT_SECRET"),
            state_key: get(STATE_KEY_VAR).map(Secret::new),
            public_base_url: get("WEBHOOK_BASE_URL"),
            success_url: get("HOOKLINE_OAUTH_SUCCESS_URL"),
            state_max_age: OAuthState::MAX_AGE,
        }
    }

    /// [`OAuthSettings::from_lookup`] on the environment.
    pub fn from_env() -> Self {
        Self::from_lookup(crate::config::var)
    }

    fn app(&self, provider: HookProvider) -> Option<&OAuthApp> {
        match provider {
            HookProvider::GitHub => self.github.as_ref(),
            HookProvider::GitLab => self.gitlab.as_ref(),
        }
    }
}

/// The local server's state key: `<data_dir>/oauth-state.key`, 32 random bytes as hex,
/// created owner-only (0600) on first use.
pub fn local_state_key(data_dir: &Path) -> io::Result<Secret> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(LOCAL_STATE_KEY_FILE);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(&path) {
        Ok(mut file) => {
            use std::io::Write;
            let key = hex::encode(rand::random::<[u8; 32]>());
            file.write_all(key.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let key = std::fs::read_to_string(&path)?.trim().to_string();
    if key.len() < MIN_STATE_KEY_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is shorter than {MIN_STATE_KEY_LEN} characters; delete it to make a new one",
                path.display()
            ),
        ));
    }
    Ok(Secret::new(key))
}

fn repo_provider(p: HookProvider) -> RepoProvider {
    match p {
        HookProvider::GitHub => RepoProvider::Github,
        HookProvider::GitLab => RepoProvider::Gitlab,
    }
}

/// The scope a token needs to manage hooks, as the provider names it.
fn hook_scope(p: HookProvider) -> &'static str {
    match p {
        HookProvider::GitHub => "admin:repo_hook",
        HookProvider::GitLab => "api",
    }
}

fn not_configured(provider: HookProvider) -> Response {
    let (id, secret) = match provider {
        HookProvider::GitHub => ("GITHUB_OAUTH_CLIENT_ID", "GITHUB_OAUTH_CLIENT_SECRET"),
        HookProvider::GitLab => ("GITLAB_OAUTH_CLIENT_ID", "GITLAB_OAUTH_CLIENT_SECRET"),
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &NotConfigured {
            error: "oauth_not_configured",
            message: format!(
                "{} OAuth is not configured on this server: set {id} and {secret} \
                 (on AWS: the {id} parameter and {secret} in the provider secret)",
                provider.display_name()
            ),
            missing: vec![id, secret],
        },
    )
}

fn no_state_key() -> Response {
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &NotConfigured {
            error: "oauth_not_configured",
            message: format!(
                "no key to sign OAuth states with: set {STATE_KEY_VAR} to a random value of at \
                 least {MIN_STATE_KEY_LEN} characters (on AWS: in the provider secret)"
            ),
            missing: vec![STATE_KEY_VAR],
        },
    )
}

fn bad(code: &str, message: impl Into<String>) -> Response {
    problem(StatusCode::BAD_REQUEST, code, message)
}

fn redirect(location: &str) -> Response {
    let mut res = http::Response::new(Bytes::new());
    *res.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    no_store(res)
}

/// The cookie that binds a state to the browser that asked for it (one per provider, so two
/// flows in one browser do not clobber each other).
fn cookie_name(provider: HookProvider) -> String {
    format!("hookline_oauth_{}", provider.as_str())
}

/// Set at authorize, sent back only to the callback: HttpOnly, and `SameSite=Lax` so the
/// provider's top-level redirect carries it. `Secure` whenever the callback is https.
fn binding_cookie(
    provider: HookProvider,
    nonce: &str,
    max_age: Duration,
    secure: bool,
) -> HeaderValue {
    let value = format!(
        "{}={nonce}; Path=/api/v1/oauth/{}/callback; Max-Age={}; HttpOnly; SameSite=Lax{}",
        cookie_name(provider),
        provider.as_str(),
        max_age.as_secs(),
        if secure { "; Secure" } else { "" },
    );
    HeaderValue::from_str(&value).expect("a nonce is base64url")
}

/// Whether the request carries the binding cookie for `nonce` (compared in constant time).
fn presents_binding(req: &Request, provider: HookProvider, nonce: &str) -> bool {
    let name = cookie_name(provider);
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .any(|(k, v)| k == name && crate::providers::mac::ct_eq(v.as_bytes(), nonce.as_bytes()))
}

fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The OAuth routes. Build once per cold start (or per local server).
pub struct OAuthApi {
    auth: Authenticator,
    tokens: Arc<StoredProviderTokens>,
    settings: OAuthSettings,
    clock: Arc<dyn Clock>,
}

impl OAuthApi {
    pub fn new(
        auth: Authenticator,
        tokens: Arc<StoredProviderTokens>,
        settings: OAuthSettings,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            auth,
            tokens,
            settings,
            clock,
        }
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    pub async fn handle(&self, req: Request) -> Response {
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(3).collect(); // after "", "api", "v1"
        let (provider, action) = match segments.as_slice() {
            ["oauth", provider, action @ ("authorize" | "callback")] => {
                match HookProvider::parse(provider) {
                    Some(p) if *provider == p.as_str() => (p, *action),
                    _ => return not_found(),
                }
            }
            _ => return not_found(),
        };
        if req.method() != Method::GET {
            return method_not_allowed();
        }
        match action {
            "authorize" => authorize(self, provider, &req).await,
            _ => no_store(callback(self, provider, &req).await),
        }
    }

    /// `{base}/api/v1/oauth/{provider}/callback`: the configured public URL, else the origin
    /// the request arrived on (so the authorize and callback legs compute the same one).
    fn redirect_uri(&self, provider: HookProvider, req: &Request) -> Option<String> {
        let base = match &self.settings.public_base_url {
            Some(base) => base.trim_end_matches('/').to_string(),
            None => {
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']))?;
                let proto = req
                    .headers()
                    .get("x-forwarded-proto")
                    .and_then(|h| h.to_str().ok())
                    .filter(|p| *p == "http" || *p == "https")
                    .unwrap_or("https");
                format!("{proto}://{host}")
            }
        };
        Some(format!(
            "{base}/api/v1/oauth/{}/callback",
            provider.as_str()
        ))
    }

    fn state_key(&self) -> Option<&Secret> {
        self.settings
            .state_key
            .as_ref()
            .filter(|k| k.expose().len() >= MIN_STATE_KEY_LEN)
    }
}

/// Start connecting a GitHub or GitLab account
///
/// A 302 to the provider's authorize page with a signed `state` (`?format=json` answers the
/// URL instead, for single-page apps), and the `hookline_oauth_{provider}` cookie that binds
/// the state to this browser.
#[utoipa::path(
    get,
    path = "/api/v1/oauth/{provider}/authorize",
    tag = "oauth",
    params(
        ("provider" = RepoProvider, Path, description = "`github` or `gitlab`"),
        ("format" = Option<String>, Query, description = "`redirect` (the default) or `json`"),
    ),
    responses(
        (status = 302, description = "To the provider's authorize page",
            headers(("Location" = String), ("Set-Cookie" = String, description = "`hookline_oauth_{provider}`: binds the state to this browser"))),
        (status = 200, description = "`?format=json`: the authorize URL", body = AuthorizeUrl,
            headers(("Set-Cookie" = String, description = "`hookline_oauth_{provider}`: binds the state to this browser"))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, description = "The provider's OAuth app or the state key is not configured here", body = NotConfigured),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn authorize(api: &OAuthApi, provider: HookProvider, req: &Request) -> Response {
    let principal = match api.auth.authenticate_request(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = principal.require(Scope::ReposWrite) {
        return e.into_response();
    }
    let Some(app) = api.settings.app(provider) else {
        return not_configured(provider);
    };
    let Some(key) = api.state_key() else {
        return no_state_key();
    };
    let Some(redirect_uri) = api.redirect_uri(provider, req) else {
        return bad(
            "invalid_request",
            "the request has no Host header to build the callback URL from: set WEBHOOK_BASE_URL",
        );
    };
    let (state, signed) = OAuthState::issue(
        key,
        principal.user_id.as_str(),
        principal.org_id.as_str(),
        provider,
        api.clock.now(),
    );
    let cookie = binding_cookie(
        provider,
        &signed.nonce,
        api.settings.state_max_age,
        redirect_uri.starts_with("https://"),
    );
    let url =
        api.settings
            .client
            .authorize_url(provider, &app.client_id, &redirect_uri, &state, &[]);
    tracing::info!(
        provider = provider.as_str(),
        org_id = principal.org_id.as_str(),
        user_id = principal.user_id.as_str(),
        "OAuth authorization started"
    );
    let mut res = match query_param(req.uri(), "format").as_deref() {
        Some("json") => no_store(json(
            StatusCode::OK,
            &AuthorizeUrl {
                provider: repo_provider(provider),
                authorize_url: &url,
                redirect_uri: &redirect_uri,
                expires_in: api.settings.state_max_age.as_secs(),
            },
        )),
        None | Some("redirect") => redirect(&url),
        Some(_) => return bad("invalid_request", "format must be json or redirect"),
    };
    res.headers_mut().append(header::SET_COOKIE, cookie);
    res
}

/// The provider's redirect back
///
/// Exchanges the code and stores the token sealed for the org and user that started the flow
/// (the state says who, and is accepted only with the cookie authorize set in this browser).
/// No bearer token: the provider's redirect carries none.
#[utoipa::path(
    get,
    path = "/api/v1/oauth/{provider}/callback",
    tag = "oauth",
    params(
        ("provider" = RepoProvider, Path, description = "`github` or `gitlab`"),
        ("code" = Option<String>, Query, description = "The provider's authorization code"),
        ("state" = Option<String>, Query, description = "The state authorize issued"),
        ("error" = Option<String>, Query, description = "Set by the provider when the user declined"),
    ),
    responses(
        (status = 200, description = "Connected (without `HOOKLINE_OAUTH_SUCCESS_URL`)", body = OAuthConnected),
        (status = 302, description = "Connected: to `HOOKLINE_OAUTH_SUCCESS_URL`", headers(("Location" = String))),
        (status = 400, description = "Declined, a missing, expired or foreign state, a missing code, a refused code, or a token without the hook scope", body = Problem),
        (status = 404, response = super::openapi::NotFound),
        (status = 502, response = super::openapi::ProviderError),
        (status = 503, description = "Not configured here, or the token could not be stored", body = NotConfigured),
    ),
)]
async fn callback(api: &OAuthApi, provider: HookProvider, req: &Request) -> Response {
    let name = provider.display_name();
    // The user said no (or the provider refused) on the authorize page.
    if let Some(error) = query_param(req.uri(), "error") {
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let message = if error == "access_denied" {
            format!("the {name} authorization was declined: start again to connect")
        } else {
            format!("{name} did not authorize Hookline ({error}): start again to connect")
        };
        return bad("oauth_denied", message);
    }
    let Some(key) = api.state_key() else {
        return no_state_key();
    };
    let Some(raw_state) = query_param(req.uri(), "state").filter(|s| !s.is_empty()) else {
        return bad(
            "invalid_state",
            "the state parameter is missing: start again from /api/v1/oauth/{provider}/authorize",
        );
    };
    let state =
        match OAuthState::verify(key, &raw_state, api.clock.now(), api.settings.state_max_age) {
            Ok(s) => s,
            Err(StateError::Expired) => {
                return bad(
                    "state_expired",
                    format!(
                        "the OAuth state has expired (it is valid for {} minutes): start again",
                        api.settings.state_max_age.as_secs() / 60
                    ),
                )
            }
            Err(StateError::NoKey) => return no_state_key(),
            Err(e @ (StateError::Malformed | StateError::BadSignature)) => {
                tracing::warn!(
                    provider = provider.as_str(),
                    reason = %e,
                    security = true,
                    "OAuth callback with a state this server did not issue"
                );
                return bad(
                    "invalid_state",
                    "the state parameter was not issued by this server or was altered: start again",
                );
            }
        };
    if state.provider != provider {
        return bad(
            "invalid_state",
            format!(
                "the state was issued for {}, not {name}: start again",
                state.provider.display_name()
            ),
        );
    }
    // The state must come back to the browser it was issued to: otherwise anyone could
    // start a flow with their own Hookline account and send the provider's authorize link
    // to someone else, whose account the callback would then store under theirs.
    if !presents_binding(req, provider, &state.nonce) {
        tracing::warn!(
            provider = provider.as_str(),
            org_id = state.org.as_str(),
            security = true,
            "OAuth callback from a browser that did not start the authorization"
        );
        return bad(
            "invalid_state",
            format!(
                "this browser did not start the authorization (its {} cookie is missing or \
                 belongs to another one): start again from /api/v1/oauth/{}/authorize in \
                 this browser",
                cookie_name(provider),
                provider.as_str()
            ),
        );
    }
    let Some(code) = query_param(req.uri(), "code").filter(|c| !c.is_empty()) else {
        return bad(
            "invalid_request",
            format!("the code parameter is missing: {name} sends it when it redirects here"),
        );
    };
    let Some(app) = api.settings.app(provider) else {
        return not_configured(provider);
    };
    let Some(redirect_uri) = api.redirect_uri(provider, req) else {
        return bad(
            "invalid_request",
            "the request has no Host header to build the callback URL from: set WEBHOOK_BASE_URL",
        );
    };
    let token = match api
        .settings
        .client
        .exchange_code(provider, app, &code, &redirect_uri, api.clock.now())
        .await
    {
        Ok(t) => t,
        Err(e) => return exchange_failed(&e),
    };
    if token.lacks_hook_scope(provider) {
        let scope = hook_scope(provider);
        return json(
            StatusCode::BAD_REQUEST,
            &serde_json::json!({
                "error": "missing_scope",
                "message": format!(
                    "the {name} token was granted without the {scope} scope Hookline needs \
                     to manage repository hooks: connect again and approve {scope}"
                ),
                "missing_scope": scope,
                "scopes": token.scopes,
            }),
        );
    }
    if let Err(e) = api
        .tokens
        .put_granted(&state.org, &state.user, repo_provider(provider), &token)
        .await
    {
        tracing::error!(error = %e, provider = provider.as_str(), "could not store an OAuth token");
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the token could not be stored: try again shortly",
        );
    }
    tracing::info!(
        provider = provider.as_str(),
        org_id = %state.org,
        user_id = %state.user,
        "OAuth account connected"
    );
    match &api.settings.success_url {
        Some(url) => {
            let sep = if url.contains('?') { '&' } else { '?' };
            redirect(&format!(
                "{url}{sep}provider={}&connected=true",
                provider.as_str()
            ))
        }
        None => json(
            StatusCode::OK,
            &OAuthConnected {
                provider: repo_provider(provider),
                connected: true,
                scopes: &token.scopes,
                expires_at: token.expires_at,
            },
        ),
    }
}

fn exchange_failed(e: &OAuthError) -> Response {
    let provider = e.provider().as_str();
    match e {
        OAuthError::Rejected { .. } => {
            tracing::warn!(provider, error = %e, "OAuth code exchange refused");
            bad("oauth_rejected", e.reason())
        }
        OAuthError::Unavailable { .. } | OAuthError::Unreachable { .. } => {
            tracing::warn!(provider, error = %e, "OAuth token endpoint unavailable");
            let mut res = problem(StatusCode::BAD_GATEWAY, "provider_unavailable", e.reason());
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            res
        }
        OAuthError::Unexpected { .. } => {
            tracing::error!(provider, error = %e, "OAuth token endpoint answered unexpectedly");
            problem(StatusCode::BAD_GATEWAY, "provider_error", e.reason())
        }
    }
}
