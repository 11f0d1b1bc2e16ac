//! `/api/v1/repositories/…` and `/api/v1/provider-tokens/…`: connect, list, read, change,
//! rotate, retry and disconnect repositories, and register provider access tokens; with a
//! delivery log, `/api/v1/webhooks/deliveries…` (`api::deliveries`) too. Every
//! route needs a bearer token; a principal only ever sees its own org (another org's id is a
//! 404, never a 403).

use super::{bad_request, json_body, method_not_allowed, not_found, query_param};
use crate::auth::{Authenticator, Principal, Scope};
use crate::connections::service::{
    ConnectError, ConnectRequest, ConnectionPatch, Repositories, StoredProviderTokens,
};
use crate::connections::{Connection, ConnectionId, RepoProvider, WebhookStatus};
use crate::http::{json, problem, Request, Response};
use crate::secret::Secret;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;

/// A connection as the API shows it (seed 001): never a secret.
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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
#[derive(Debug, Serialize)]
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
            &serde_json::json!({
                "error": "already_connected",
                "message": "this repository is already connected in your organisation",
                "connection_id": id,
            }),
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
        let principal = match self.auth.authenticate(req.headers()).await {
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
                Method::POST => self.connect(&principal, &req).await,
                _ => method_not_allowed(),
            },
            ["repositories", "connections"] => match *req.method() {
                Method::GET => self.list(&principal, &req).await,
                _ => method_not_allowed(),
            },
            ["repositories", "connections", id] => match *req.method() {
                Method::GET => {
                    self.with_scope(&principal, Scope::ReposRead, id, |id| {
                        self.get(&principal, id)
                    })
                    .await
                }
                Method::PATCH => {
                    self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                        self.update(&principal, id, &req)
                    })
                    .await
                }
                Method::DELETE => {
                    self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                        self.disconnect(&principal, id, &req)
                    })
                    .await
                }
                _ => method_not_allowed(),
            },
            ["repositories", "connections", id, "webhook", action] => {
                match (req.method().clone(), *action) {
                    (Method::GET, "status") => {
                        self.with_scope(&principal, Scope::ReposRead, id, |id| {
                            self.status(&principal, id)
                        })
                        .await
                    }
                    (Method::POST, "retry") => {
                        self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                            self.retry(&principal, id)
                        })
                        .await
                    }
                    (Method::POST, "rotate") => {
                        self.with_scope(&principal, Scope::ReposWrite, id, |id| {
                            self.rotate(&principal, id)
                        })
                        .await
                    }
                    (_, "status" | "retry" | "rotate") => method_not_allowed(),
                    _ => not_found(),
                }
            }
            ["provider-tokens", provider] => match *req.method() {
                Method::PUT => self.put_token(&principal, provider, &req).await,
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

    async fn connect(&self, p: &Principal, req: &Request) -> Response {
        if let Err(e) = p.require(Scope::ReposWrite) {
            return e.into_response();
        }
        let body: ConnectRequest = match json_body(req.body()) {
            Ok(b) => b,
            Err(msg) => return bad_request(msg),
        };
        match self
            .repos
            .connect(p.org_id.as_str(), p.user_id.as_str(), body)
            .await
        {
            Ok(c) => json(StatusCode::CREATED, &ConnectionView::from(&c)),
            Err(e) => error(e),
        }
    }

    async fn list(&self, p: &Principal, req: &Request) -> Response {
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
        match self.repos.list(p.org_id.as_str(), limit, cursor).await {
            Ok((page, next)) => {
                let items: Vec<ConnectionView<'_>> =
                    page.iter().map(ConnectionView::from).collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "connections": items, "next_cursor": next }),
                )
            }
            Err(e) => error(e),
        }
    }

    async fn get(&self, p: &Principal, id: ConnectionId) -> Response {
        match self.repos.get(p.org_id.as_str(), &id).await {
            Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
            Err(e) => error(e),
        }
    }

    async fn update(&self, p: &Principal, id: ConnectionId, req: &Request) -> Response {
        let patch: ConnectionPatch = match json_body(req.body()) {
            Ok(b) => b,
            Err(msg) => return bad_request(msg),
        };
        match self.repos.update(p.org_id.as_str(), &id, patch).await {
            Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
            Err(e) => error(e),
        }
    }

    async fn disconnect(&self, p: &Principal, id: ConnectionId, req: &Request) -> Response {
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
        match self
            .repos
            .disconnect(p.org_id.as_str(), &id, delete_webhook)
            .await
        {
            Ok(done) => json(StatusCode::OK, &done),
            Err(e) => error(e),
        }
    }

    async fn status(&self, p: &Principal, id: ConnectionId) -> Response {
        let c = match self.repos.get(p.org_id.as_str(), &id).await {
            Ok(c) => c,
            Err(e) => return error(e),
        };
        // The counts come from the delivery log, so they agree with what it lists.
        let (last_delivery_at, total_deliveries, failed_deliveries) = match &self.deliveries {
            Some(api) => match api.log().counts(p.org_id.as_str(), id.as_str()).await {
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
                health: HealthView::of(&c, self.repos.now()),
            },
        )
    }

    async fn retry(&self, p: &Principal, id: ConnectionId) -> Response {
        match self.repos.retry(p.org_id.as_str(), &id).await {
            Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
            Err(e) => error(e),
        }
    }

    async fn rotate(&self, p: &Principal, id: ConnectionId) -> Response {
        match self.repos.rotate(p.org_id.as_str(), &id).await {
            Ok(c) => json(StatusCode::OK, &ConnectionView::from(&c)),
            Err(e) => error(e),
        }
    }

    async fn put_token(&self, p: &Principal, provider: &str, req: &Request) -> Response {
        if let Err(e) = p.require(Scope::ReposWrite) {
            return e.into_response();
        }
        let provider = match provider {
            "github" => RepoProvider::Github,
            "gitlab" => RepoProvider::Gitlab,
            _ => return not_found(),
        };
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            access_token: String,
        }
        let body: Body = match json_body(req.body()) {
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
        match self
            .tokens
            .put(p.org_id.as_str(), p.user_id.as_str(), provider, &token)
            .await
        {
            Ok(()) => json(
                StatusCode::OK,
                &serde_json::json!({ "provider": provider, "stored": true }),
            ),
            Err(e) => error(e),
        }
    }
}
