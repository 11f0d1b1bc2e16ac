//! `/api/v1/repositories/…` and `/api/v1/provider-tokens/…`: connect, list, read, change,
//! rotate, retry and disconnect repositories, and register provider access tokens; with a
//! delivery log, `/api/v1/webhooks/deliveries…` (`api::deliveries`) too. Every
//! route needs a bearer token; a principal only ever sees its own org (another org's id is a
//! 404, never a 403).

use super::{bad_request, json_body, method_not_allowed, not_found, query_param};
use crate::auth::{Authenticator, Principal, Scope};
use crate::connections::service::{
    ConnectError, ConnectRequest, ConnectionPatch, Disconnected, Repositories, StoredProviderTokens,
};
use crate::connections::{Connection, ConnectionId, RepoProvider, WebhookStatus};
use crate::http::{json, problem, Request, Response};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// One page of the org's connections, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct ConnectionPage<'a> {
    connections: Vec<ConnectionView<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// `PUT /api/v1/provider-tokens/{provider}`'s body.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProviderTokenBody {
    /// A personal access token (GitHub `admin:repo_hook` + `repo`; GitLab `api`).
    #[schema(min_length = 1)]
    access_token: String,
}

/// The token was stored (sealed; it is never returned).
#[derive(Debug, Serialize, ToSchema)]
struct ProviderTokenStored {
    provider: RepoProvider,
    stored: bool,
}

/// 409 on connect: the org already connected this repository.
#[derive(Debug, Serialize, ToSchema)]
struct AlreadyConnected<'a> {
    /// `already_connected`.
    error: &'a str,
    message: &'a str,
    /// The existing connection.
    connection_id: ConnectionId,
}

/// A connection as the API shows it (seed 001): never a secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Connection)]
pub struct ConnectionView<'a> {
    pub id: &'a ConnectionId,
    pub provider: RepoProvider,
    pub repository_full_name: &'a str,
    pub webhook_id: Option<&'a str>,
    pub webhook_url: &'a str,
    pub webhook_status: WebhookStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_status_reason: Option<&'a str>,
    pub webhook_events: &'a [String],
    pub webhook_created_at: Option<DateTime<Utc>>,
    pub webhook_last_delivery_at: Option<DateTime<Utc>>,
    pub is_enabled: bool,
    pub auto_pr_enabled: bool,
    pub created_at: DateTime<Utc>,
}

impl<'a> From<&'a Connection> for ConnectionView<'a> {
    fn from(c: &'a Connection) -> Self {
        Self {
            id: &c.id,
            provider: c.provider,
            repository_full_name: &c.repository_full_name,
            webhook_id: c.webhook_id.as_deref(),
            webhook_url: &c.webhook_url,
            webhook_status: c.webhook_status,
            webhook_status_reason: c.webhook_status_reason.as_deref(),
            webhook_events: &c.webhook_events,
            webhook_created_at: c.webhook_created_at,
            webhook_last_delivery_at: c.webhook_last_delivery_at,
            is_enabled: c.is_enabled,
            auto_pr_enabled: c.auto_pr_enabled,
            created_at: c.created_at,
        }
    }
}

/// Seed 004's webhook status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = WebhookStatusReport)]
struct WebhookStatusView<'a> {
    webhook_id: Option<&'a str>,
    status: WebhookStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    events: &'a [String],
    last_delivery_at: Option<DateTime<Utc>>,
    total_deliveries: u64,
    failed_deliveries: u64,
    #[serde(flatten)]
    health: HealthView,
}

/// Whether the hook is known to work (issue 10): the ping Hookline asked for after creating
/// or repairing it, and what the hook-health check last found.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = HookHealth)]
struct HealthView {
    /// When a ping last arrived and verified.
    last_ping_at: Option<DateTime<Utc>>,
    /// `true` once the last ping asked for arrived; `false` if the provider refused to send it
    /// or it did not come within ten minutes; `null` while awaited, or if none was asked for.
    ping_ok: Option<bool>,
    ping_requested_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ping_error: Option<String>,
    /// When the hook-health check last read the hook from the provider.
    last_checked_at: Option<DateTime<Utc>>,
    /// Set while the hook has been silent for `HOOK_SILENCE_ALERT` though the repository saw
    /// pushes: since when, and what to do about it.
    silent_since: Option<DateTime<Utc>>,
    alert: Option<String>,
}

impl HealthView {
    fn of(c: &Connection, now: DateTime<Utc>) -> Self {
        let h = &c.health;
        Self {
            last_ping_at: h.last_ping_at,
            ping_ok: h.ping_ok(now),
            ping_requested_at: h.ping_requested_at,
            ping_error: h.ping_error.clone(),
            last_checked_at: h.checked_at,
            silent_since: h.silent_since,
            alert: h.alert.clone(),
        }
    }
}

fn error(e: ConnectError) -> Response {
    match e {
        ConnectError::Invalid(msg) => problem(StatusCode::BAD_REQUEST, "invalid_request", msg),
        ConnectError::AlreadyConnected(id) => json(
            StatusCode::CONFLICT,
            &AlreadyConnected {
                error: "already_connected",
                message: "this repository is already connected in your organisation",
                connection_id: id,
            },
        ),
        ConnectError::NotFound => not_found(),
        ConnectError::PlanLimit(limit) => super::plan_limit(&limit),
        ConnectError::Provider(reason) => {
            problem(StatusCode::BAD_GATEWAY, "provider_error", reason)
        }
        ConnectError::Unavailable(detail) => {
            tracing::error!(error = %detail, "repositories API could not complete a call");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again shortly",
            )
        }
    }
}

pub struct RepositoriesApi {
    auth: Authenticator,
    repos: Arc<Repositories>,
    tokens: Arc<StoredProviderTokens>,
    /// The inbound delivery log: its routes, and the status route's counts.
    deliveries: Option<super::deliveries::DeliveriesApi>,
}

impl RepositoriesApi {
    pub fn new(
        auth: Authenticator,
        repos: Arc<Repositories>,
        tokens: Arc<StoredProviderTokens>,
    ) -> Self {
        Self {
            auth,
            repos,
            tokens,
            deliveries: None,
        }
    }

    /// Also serve the delivery log, and count each connection's deliveries from it.
    pub fn with_delivery_log(mut self, log: Arc<crate::delivery_log::DeliveryLog>) -> Self {
        self.deliveries = Some(super::deliveries::DeliveriesApi::new(log));
        self
    }

    pub async fn handle(&self, req: Request) -> Response {
        let principal = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(3).collect(); // after "", "api", "v1"
        match segments.as_slice() {
            ["webhooks", "deliveries", rest @ ..] => match &self.deliveries {
                Some(api) => api.handle(&principal, &req, rest).await,
                None => not_found(),
            },
            ["repositories", "connect"] => match *req.method() {
                Method::POST => connect(self, &principal, &req).await,
                _ => method_not_allowed(),
            },
            ["repositories", "connections"] => match *req.method() {
                Method::GET => list(self, &principal, &req).await,
                _ => method_not_allowed(),
            },
            ["repositories", "connections", id] => match *req.method() {
                Method::GET => {
                    self.with_scope(&principal, Scope::ReposRead, id, |id| {
                        get(self, &principal, id)
                    })
                    .await
                }
                Method::PATCH => {
                    self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                        update(self, &principal, id, &req)
                    })
                    .await
                }
                Method::DELETE => {
                    self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                        disconnect(self, &principal, id, &req)
                    })
                    .await
                }
                _ => method_not_allowed(),
            },
            ["repositories", "connections", id, "webhook", action] => {
                match (req.method().clone(), *action) {
                    (Method::GET, "status") => {
                        self.with_scope(&principal, Scope::ReposRead, id, |id| {
                            status(self, &principal, id)
                        })
                        .await
                    }
                    (Method::POST, "retry") => {
                        self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                            retry(self, &principal, id)
                        })
                        .await
                    }
                    (Method::POST, "rotate") => {
                        self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                            rotate(self, &principal, id)
                        })
                        .await
                    }
                    (_, "status" | "retry" | "rotate") => method_not_allowed(),
                    _ => not_found(),
                }
            }
            ["provider-tokens", provider] => match *req.method() {
                Method::PUT => put_token(self, &principal, provider, &req).await,
                _ => method_not_allowed(),
            },
            _ => not_found(),
        }
    }

    /// Check the scope, then parse the id: a malformed id is as unknown as another org's.
    async fn with_scope<F, Fut>(&self, p: &Principal, scope: Scope, raw_id: &str, f: F) -> Response
    where
        F: FnOnce(ConnectionId) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        if let Err(e) = p.require(scope) {
            return e.into_response();
        }
        match ConnectionId::parse(raw_id) {
            Some(id) => f(id).await,
            None => not_found(),
        }
    }
}

/// Connect a repository
///
/// Hookline creates the repository's webhook with a fresh secret of its own (unless
/// `setup_webhook` is false). A provider failure keeps the connection with
/// `webhook_status: "failed"` and a reason; `…/webhook/retry` tries again.
#[utoipa::path(
    post,
    path = "/api/v1/repositories/connect",
    tag = "repositories",
    request_body = ConnectRequest,
    responses(
        (status = 201, description = "Connected", body = ConnectionView),
        (status = 400, response = super::openapi::BadRequest),
        (status = 402, response = super::openapi::PlanLimit),
        (status = 409, description = "The org already connected this repository", body = AlreadyConnected),
        (status = 502, response = super::openapi::ProviderError),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn connect(api: &RepositoriesApi, p: &Principal, req: &Request) -> Response {
    if let Err(e) = p.require(Scope::ReposWrite) {
        return e.into_response();
    }
    let body: ConnectRequest = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return bad_request(msg),
    };
    match api
        .repos
        .connect(p.org_id.as_str(), p.user_id.as_str(), body)
        .await
    {
        Ok(c) => json(StatusCode::CREATED, &ConnectionView::from(&c)),
        Err(e) => error(e),
    }
}

/// List the org's connections
///
/// Newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/repositories/connections",
    tag = "repositories",
    params(super::openapi::Page),
    responses(
        (status = 200, description = "A page of connections", body = ConnectionPage),
        (status = 400, response = super::openapi::BadRequest),
    ),
    security(("bearer" = ["repos:read"]))
)]
async fn list(api: &RepositoriesApi, p: &Principal, req: &Request) -> Response {
    if let Err(e) = p.require(Scope::ReposRead) {
        return e.into_response();
    }
    let (limit, cursor) = match super::page_params(
        req,
        crate::ports::connections::MAX_PAGE,
        crate::ports::connections::valid_cursor,
    ) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    match api.repos.list(p.org_id.as_str(), limit, cursor).await {
        Ok((page, next)) => json(
            StatusCode::OK,
            &ConnectionPage {
                connections: page.iter().map(ConnectionView::from).collect(),
                next_cursor: next,
            },
        ),
        Err(e) => error(e),
    }
}

/// One connection
#[utoipa::path(
    get,
    path = "/api/v1/repositories/connections/{id}",
    tag = "repositories",
    params(("id" = ConnectionId, Path, description = "The connection (`rpc_…`)")),
    responses((status = 200, description = "The connection", body = ConnectionView)),
    security(("bearer" = ["repos:read"]))
)]
async fn get(api: &RepositoriesApi, p: &Principal, id: ConnectionId) -> Response {
    match api.repos.get(p.org_id.as_str(), &id).await {
        Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
        Err(e) => error(e),
    }
}

/// Change a connection
///
/// A new `webhook_events` list is pushed to the provider's hook.
#[utoipa::path(
    patch,
    path = "/api/v1/repositories/connections/{id}",
    tag = "repositories",
    params(("id" = ConnectionId, Path, description = "The connection (`rpc_…`)")),
    request_body = ConnectionPatch,
    responses(
        (status = 200, description = "The changed connection", body = ConnectionView),
        (status = 400, response = super::openapi::BadRequest),
        (status = 502, response = super::openapi::ProviderError),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn update(api: &RepositoriesApi, p: &Principal, id: ConnectionId, req: &Request) -> Response {
    let patch: ConnectionPatch = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return bad_request(msg),
    };
    match api.repos.update(p.org_id.as_str(), &id, patch).await {
        Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
        Err(e) => error(e),
    }
}

/// Disconnect a repository
///
/// Deletes the provider's hook too unless `delete_webhook=false` (a hook already gone, or a
/// provider error, still disconnects; `message` says which).
#[utoipa::path(
    delete,
    path = "/api/v1/repositories/connections/{id}",
    tag = "repositories",
    params(
        ("id" = ConnectionId, Path, description = "The connection (`rpc_…`)"),
        ("delete_webhook" = Option<bool>, Query, description = "Delete the provider's hook too (default `true`)"),
    ),
    responses(
        (status = 200, description = "Disconnected", body = Disconnected),
        (status = 400, response = super::openapi::BadRequest),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn disconnect(
    api: &RepositoriesApi,
    p: &Principal,
    id: ConnectionId,
    req: &Request,
) -> Response {
    let delete_webhook = match query_param(req.uri(), "delete_webhook").as_deref() {
        None | Some("true") | Some("1") => true,
        Some("false") | Some("0") => false,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "delete_webhook must be true or false",
            )
        }
    };
    match api
        .repos
        .disconnect(p.org_id.as_str(), &id, delete_webhook)
        .await
    {
        Ok(done) => json(StatusCode::OK, &done),
        Err(e) => error(e),
    }
}

/// The connection's webhook status
///
/// The delivery counts come from the delivery log, so they agree with
/// `GET /api/v1/webhooks/deliveries?connection_id=…`; the health fields say whether the hook
/// is known to work.
#[utoipa::path(
    get,
    path = "/api/v1/repositories/connections/{id}/webhook/status",
    tag = "repositories",
    params(("id" = ConnectionId, Path, description = "The connection (`rpc_…`)")),
    responses((status = 200, description = "The hook's status and health", body = WebhookStatusView)),
    security(("bearer" = ["repos:read"]))
)]
async fn status(api: &RepositoriesApi, p: &Principal, id: ConnectionId) -> Response {
    let c = match api.repos.get(p.org_id.as_str(), &id).await {
        Ok(c) => c,
        Err(e) => return error(e),
    };
    // The counts come from the delivery log, so they agree with what it lists.
    let (last_delivery_at, total_deliveries, failed_deliveries) = match &api.deliveries {
        Some(log) => match log.log().counts(p.org_id.as_str(), id.as_str()).await {
            Ok(n) => (n.last_received_at, n.total, n.failed),
            Err(e) => return error(ConnectError::Unavailable(e.to_string())),
        },
        None => (
            c.webhook_last_delivery_at,
            c.total_deliveries,
            c.failed_deliveries,
        ),
    };
    json(
        StatusCode::OK,
        &WebhookStatusView {
            webhook_id: c.webhook_id.as_deref(),
            status: c.webhook_status,
            reason: c.webhook_status_reason.as_deref(),
            events: &c.webhook_events,
            last_delivery_at,
            total_deliveries,
            failed_deliveries,
            health: HealthView::of(&c, api.repos.now()),
        },
    )
}

/// Create the hook again
///
/// For a connection whose hook failed or was removed; then asks the provider for a ping.
#[utoipa::path(
    post,
    path = "/api/v1/repositories/connections/{id}/webhook/retry",
    tag = "repositories",
    params(("id" = ConnectionId, Path, description = "The connection (`rpc_…`)")),
    responses(
        (status = 200, description = "The connection after the attempt", body = ConnectionView),
        (status = 502, response = super::openapi::ProviderError),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn retry(api: &RepositoriesApi, p: &Principal, id: ConnectionId) -> Response {
    match api.repos.retry(p.org_id.as_str(), &id).await {
        Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
        Err(e) => error(e),
    }
}

/// Rotate the hook's secret
///
/// The previous secret keeps verifying deliveries for
/// `HOOKLINE_SECRET_ROTATION_OVERLAP_SECS` (1 h).
#[utoipa::path(
    post,
    path = "/api/v1/repositories/connections/{id}/webhook/rotate",
    tag = "repositories",
    params(("id" = ConnectionId, Path, description = "The connection (`rpc_…`)")),
    responses(
        (status = 200, description = "The connection with its new secret in force", body = ConnectionView),
        (status = 502, response = super::openapi::ProviderError),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn rotate(api: &RepositoriesApi, p: &Principal, id: ConnectionId) -> Response {
    match api.repos.rotate(p.org_id.as_str(), &id).await {
        Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
        Err(e) => error(e),
    }
}

/// Register a provider access token
///
/// Stored encrypted for the caller, never returned; Hookline manages hooks with it.
#[utoipa::path(
    put,
    path = "/api/v1/provider-tokens/{provider}",
    tag = "repositories",
    params(("provider" = RepoProvider, Path, description = "`github` or `gitlab`")),
    request_body = ProviderTokenBody,
    responses(
        (status = 200, description = "Stored", body = ProviderTokenStored),
        (status = 400, response = super::openapi::BadRequest),
        (status = 404, response = super::openapi::NotFound),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn put_token(
    api: &RepositoriesApi,
    p: &Principal,
    provider: &str,
    req: &Request,
) -> Response {
    if let Err(e) = p.require(Scope::ReposWrite) {
        return e.into_response();
    }
    let provider = match provider {
        "github" => RepoProvider::Github,
        "gitlab" => RepoProvider::Gitlab,
        _ => return not_found(),
    };
    let body: ProviderTokenBody = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return bad_request(msg),
    };
    if body.access_token.trim().is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "access_token must not be empty",
        );
    }
    let token = Secret::new(body.access_token.trim());
    match api
        .tokens
        .put(p.org_id.as_str(), p.user_id.as_str(), provider, &token)
        .await
    {
        Ok(()) => json(
            StatusCode::OK,
            &ProviderTokenStored {
                provider,
                stored: true,
            },
        ),
        Err(e) => error(e),
    }
}
