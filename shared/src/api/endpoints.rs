//! `/api/v1/endpoints…`, `/api/v1/deliveries…` and `/api/v1/event-types`: an org's webhook
//! endpoints (scope `webhooks:manage` or `admin`), what was delivered to them and how each
//! attempt went, replays, and the subscribable event types. A principal only ever sees its
//! own org: another org's id is a 404.

use super::{json_body, method_not_allowed, not_found, query_param};
use crate::auth::{Authenticator, Principal, Scope};
use crate::http::{json, problem, Request, Response};
use crate::outbound::catalog::EventTypeInfo;
use crate::outbound::endpoints::{CreateEndpoint, EndpointPatch, Endpoints};
use crate::outbound::model::{
    Attempt, Delivery, DeliveryId, DeliveryStatus, Endpoint, EndpointId, EventId,
};
use crate::outbound::replay::Replay;
use crate::outbound::Error;
use crate::ports::outbound::{valid_cursor, DeliveryFilter, OutboundStore, MAX_PAGE};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// A new endpoint, with its signing secret (shown here and at `…/secret`).
#[derive(Debug, Serialize, ToSchema)]
struct CreatedEndpoint<'a> {
    #[serde(flatten)]
    endpoint: EndpointView<'a>,
    /// `whsec_…`: signs both signatures.
    secret: &'a str,
}

/// One page of the org's endpoints.
#[derive(Debug, Serialize, ToSchema)]
struct EndpointPage<'a> {
    endpoints: Vec<EndpointView<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// The endpoint is gone, with its deliveries' schedule.
#[derive(Debug, Serialize, ToSchema)]
struct EndpointDeleted<'a> {
    id: &'a EndpointId,
    deleted: bool,
}

/// The endpoint's signing secret.
#[derive(Debug, Serialize, ToSchema)]
struct EndpointSecret<'a> {
    id: &'a EndpointId,
    /// `whsec_…`.
    secret: &'a str,
}

/// The new secret; the previous one keeps signing the Standard Webhooks header beside it
/// until `previous_secret_valid_until`.
#[derive(Debug, Serialize, ToSchema)]
struct RotatedSecret<'a> {
    id: &'a EndpointId,
    /// `whsec_…`.
    secret: &'a str,
    previous_secret_valid_until: Option<DateTime<Utc>>,
}

/// `POST …/recover`'s body.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    /// Resend everything failed or dead-lettered since then (RFC 3339).
    #[schema(format = DateTime)]
    since: String,
}

/// The failed and dead-lettered deliveries since `since`, queued again.
#[derive(Debug, Serialize, ToSchema)]
struct Recovered<'a> {
    endpoint_id: &'a EndpointId,
    since: DateTime<Utc>,
    /// How many were queued.
    queued: usize,
}

/// One page of the org's outbound deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OutboundDeliveryPage)]
struct DeliveryPage<'a> {
    deliveries: Vec<DeliveryView<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// Every attempt at a delivery, oldest first.
#[derive(Debug, Serialize, ToSchema)]
struct AttemptList<'a> {
    attempts: Vec<&'a Attempt>,
}

/// A manual attempt was queued.
#[derive(Debug, Serialize, ToSchema)]
struct RetryQueued<'a> {
    delivery: DeliveryView<'a>,
    queued: bool,
}

/// What can be subscribed to.
#[derive(Debug, Serialize, ToSchema)]
struct EventTypes<'a> {
    event_types: &'a [EventTypeInfo],
}

/// An endpoint as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Endpoint)]
pub struct EndpointView<'a> {
    pub id: &'a EndpointId,
    pub url: &'a str,
    pub description: Option<&'a str>,
    pub event_types: &'a [String],
    pub signature_header: &'a str,
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<&'a str>,
    pub rate_limit_per_second: Option<u32>,
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Endpoint> for EndpointView<'a> {
    fn from(e: &'a Endpoint) -> Self {
        Self {
            id: &e.id,
            url: &e.url,
            description: e.description.as_deref(),
            event_types: &e.event_types,
            signature_header: &e.signature_header,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.as_deref(),
            rate_limit_per_second: e.rate_limit_per_second,
            failing_since: e.failing_since,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A delivery of one event to one endpoint, as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OutboundDelivery)]
pub struct DeliveryView<'a> {
    pub id: &'a DeliveryId,
    pub endpoint_id: &'a EndpointId,
    pub event_id: &'a EventId,
    pub event_type: &'a str,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<&'a str>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Delivery> for DeliveryView<'a> {
    fn from(d: &'a Delivery) -> Self {
        Self {
            id: &d.id,
            endpoint_id: &d.endpoint_id,
            event_id: &d.event_id,
            event_type: &d.event_type,
            status: d.status,
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error.as_deref(),
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// The answer of a failed outbound call.
pub(crate) fn error(e: Error) -> Response {
    match e {
        Error::Invalid(msg) => problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg),
        Error::NotFound => not_found(),
        Error::PlanLimit(limit) => super::plan_limit(&limit),
        Error::Unavailable(detail) => {
            tracing::error!(error = %detail, "outbound API could not complete a call");
            let mut res = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again shortly",
            );
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("5"),
            );
            res
        }
    }
}

pub struct EndpointsApi {
    auth: Authenticator,
    endpoints: Arc<Endpoints>,
    store: Arc<dyn OutboundStore>,
    replay: Arc<Replay>,
}

impl EndpointsApi {
    pub fn new(
        auth: Authenticator,
        endpoints: Arc<Endpoints>,
        store: Arc<dyn OutboundStore>,
        replay: Arc<Replay>,
    ) -> Self {
        Self {
            auth,
            endpoints,
            store,
            replay,
        }
    }

    pub async fn handle(&self, req: Request) -> Response {
        let p = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(3).collect(); // after "", "api", "v1"
        if segments.first() == Some(&"event-types") {
            // Anyone of the org may read what exists to subscribe to.
            return match (req.method().clone(), segments.as_slice()) {
                (Method::GET, ["event-types"]) => event_types(self),
                (_, ["event-types"]) => method_not_allowed(),
                _ => not_found(),
            };
        }
        if let Err(e) = p.require(Scope::WebhooksManage) {
            return e.into_response();
        }
        let method = req.method().clone();
        match segments.as_slice() {
            ["endpoints"] => match method {
                Method::POST => create(self, &p, &req).await,
                Method::GET => list(self, &p, &req).await,
                _ => method_not_allowed(),
            },
            ["endpoints", id, rest @ ..] => {
                let Some(id) = EndpointId::parse(id) else {
                    return not_found();
                };
                self.endpoint_route(&p, id, rest, &method, &req).await
            }
            ["deliveries"] => match method {
                Method::GET => list_deliveries(self, &p, &req).await,
                _ => method_not_allowed(),
            },
            ["deliveries", id, rest @ ..] => {
                let Some(id) = DeliveryId::parse(id) else {
                    return not_found();
                };
                self.delivery_route(&p, id, rest, &method).await
            }
            _ => not_found(),
        }
    }

    async fn endpoint_route(
        &self,
        p: &Principal,
        id: EndpointId,
        rest: &[&str],
        method: &Method,
        req: &Request,
    ) -> Response {
        let org = p.org_id.as_str();
        match (method.clone(), rest) {
            (Method::GET, []) => get(self, org, &id).await,
            (Method::PATCH, []) => update(self, org, &id, req).await,
            (Method::DELETE, []) => delete(self, org, &id).await,
            (Method::GET, ["secret"]) => secret(self, org, &id).await,
            (Method::POST, ["secret", "rotate"]) => rotate_secret(self, org, &id).await,
            (Method::POST, ["test"]) => test(self, org, &id).await,
            (Method::POST, ["recover"]) => recover(self, org, &id, req).await,
            (_, [] | ["secret"] | ["secret", "rotate"] | ["test"] | ["recover"]) => {
                method_not_allowed()
            }
            _ => not_found(),
        }
    }

    async fn delivery_route(
        &self,
        p: &Principal,
        id: DeliveryId,
        rest: &[&str],
        method: &Method,
    ) -> Response {
        let org = p.org_id.as_str();
        match (method.clone(), rest) {
            (Method::GET, []) => get_delivery(self, org, &id).await,
            (Method::GET, ["attempts"]) => attempts(self, org, &id).await,
            (Method::POST, ["retry"]) => retry(self, org, &id).await,
            (_, [] | ["attempts"] | ["retry"]) => method_not_allowed(),
            _ => not_found(),
        }
    }
}

fn answer(result: Result<Endpoint, Error>, status: StatusCode) -> Response {
    match result {
        Ok(e) => json(status, &EndpointView::from(&e)),
        Err(e) => error(e),
    }
}

/// What can be subscribed to
///
/// Seed 002's and 003's events, `incident.*`, `webhook.test`, the relays `github.*` …
/// `whatsapp.*`, and the deployment's own (`HOOKLINE_EVENT_TYPES`). Any token of the org may
/// read it.
#[utoipa::path(
    get,
    path = "/api/v1/event-types",
    tag = "endpoints",
    responses((status = 200, description = "The event types", body = EventTypes)),
    security(("bearer" = []))
)]
fn event_types(api: &EndpointsApi) -> Response {
    json(
        StatusCode::OK,
        &EventTypes {
            event_types: api.endpoints.catalog().types(),
        },
    )
}

/// Register an endpoint
///
/// The URL must be `https` and must not be, or resolve to, a private, loopback, link-local or
/// metadata address. A `webhook.test` event is sent to it at once.
#[utoipa::path(
    post,
    path = "/api/v1/endpoints",
    tag = "endpoints",
    request_body = CreateEndpoint,
    responses(
        (status = 201, description = "Registered, with its secret", body = CreatedEndpoint),
        (status = 402, response = super::openapi::PlanLimit),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn create(api: &EndpointsApi, p: &Principal, req: &Request) -> Response {
    let body: CreateEndpoint = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return super::bad_request(msg),
    };
    match api.endpoints.create(p.org_id.as_str(), body).await {
        Ok((e, secret)) => json(
            StatusCode::CREATED,
            &CreatedEndpoint {
                endpoint: EndpointView::from(&e),
                secret: secret.expose(),
            },
        ),
        Err(e) => error(e),
    }
}

/// The org's endpoints
#[utoipa::path(
    get,
    path = "/api/v1/endpoints",
    tag = "endpoints",
    params(super::openapi::Page),
    responses(
        (status = 200, description = "A page of endpoints", body = EndpointPage),
        (status = 400, response = super::openapi::BadRequest),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn list(api: &EndpointsApi, p: &Principal, req: &Request) -> Response {
    let (limit, cursor) = match super::page_params(req, MAX_PAGE, valid_cursor) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    match api.endpoints.list(p.org_id.as_str(), limit, cursor).await {
        Ok((page, next)) => json(
            StatusCode::OK,
            &EndpointPage {
                endpoints: page.iter().map(EndpointView::from).collect(),
                next_cursor: next,
            },
        ),
        Err(e) => error(e),
    }
}

/// One endpoint
#[utoipa::path(
    get,
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    responses((status = 200, description = "The endpoint", body = EndpointView)),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn get(api: &EndpointsApi, org: &str, id: &EndpointId) -> Response {
    answer(api.endpoints.get(org, id).await, StatusCode::OK)
}

/// Change an endpoint
///
/// `{"enabled": true}` brings back an endpoint Hookline disabled; `null` clears
/// `description` and `rate_limit_per_second`.
#[utoipa::path(
    patch,
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    request_body = EndpointPatch,
    responses(
        (status = 200, description = "The changed endpoint", body = EndpointView),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn update(api: &EndpointsApi, org: &str, id: &EndpointId, req: &Request) -> Response {
    let patch: EndpointPatch = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return super::bad_request(msg),
    };
    answer(api.endpoints.update(org, id, patch).await, StatusCode::OK)
}

/// Delete an endpoint
#[utoipa::path(
    delete,
    path = "/api/v1/endpoints/{id}",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    responses((status = 200, description = "Deleted", body = EndpointDeleted)),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn delete(api: &EndpointsApi, org: &str, id: &EndpointId) -> Response {
    match api.endpoints.delete(org, id).await {
        Ok(()) => json(StatusCode::OK, &EndpointDeleted { id, deleted: true }),
        Err(e) => error(e),
    }
}

/// The endpoint's signing secret
#[utoipa::path(
    get,
    path = "/api/v1/endpoints/{id}/secret",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    responses((status = 200, description = "The secret", body = EndpointSecret)),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn secret(api: &EndpointsApi, org: &str, id: &EndpointId) -> Response {
    match api.endpoints.secret(org, id).await {
        Ok(secret) => json(
            StatusCode::OK,
            &EndpointSecret {
                id,
                secret: secret.expose(),
            },
        ),
        Err(e) => error(e),
    }
}

/// Rotate the endpoint's secret
///
/// The old secret keeps signing the Standard Webhooks header beside the new one for
/// `OUTBOUND_SECRET_OVERLAP`; the `sha256=` header is signed with the new one at once.
#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{id}/secret/rotate",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    responses((status = 200, description = "The new secret", body = RotatedSecret)),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn rotate_secret(api: &EndpointsApi, org: &str, id: &EndpointId) -> Response {
    match api.endpoints.rotate(org, id).await {
        Ok((e, secret)) => json(
            StatusCode::OK,
            &RotatedSecret {
                id,
                secret: secret.expose(),
                previous_secret_valid_until: e.previous_secret.and_then(|p| p.valid_until),
            },
        ),
        Err(e) => error(e),
    }
}

/// Send a test event now
#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{id}/test",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    responses(
        (status = 202, description = "The test event's delivery, queued", body = DeliveryView),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn test(api: &EndpointsApi, org: &str, id: &EndpointId) -> Response {
    match api.endpoints.test(org, id).await {
        Ok(d) => json(StatusCode::ACCEPTED, &DeliveryView::from(&d)),
        Err(e) => error(e),
    }
}

/// Resend what failed since a time
///
/// Every failed or dead-lettered delivery to the endpoint since `since` gets a new attempt.
#[utoipa::path(
    post,
    path = "/api/v1/endpoints/{id}/recover",
    tag = "endpoints",
    params(("id" = EndpointId, Path, description = "The endpoint (`ep_…`)")),
    request_body = RecoverBody,
    responses(
        (status = 202, description = "Queued", body = Recovered),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn recover(api: &EndpointsApi, org: &str, id: &EndpointId, req: &Request) -> Response {
    let body: RecoverBody = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return super::bad_request(msg),
    };
    let since = match DateTime::parse_from_rfc3339(body.since.trim()) {
        Ok(t) => t.with_timezone(&Utc),
        Err(_) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                "since must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
            )
        }
    };
    match api.replay.recover(org, id, since).await {
        Ok(n) => json(
            StatusCode::ACCEPTED,
            &Recovered {
                endpoint_id: id,
                since,
                queued: n,
            },
        ),
        Err(e) => error(e),
    }
}

/// The org's outbound deliveries
///
/// Newest first. An `endpoint_id` or `event_id` that names nothing matches nothing.
#[utoipa::path(
    get,
    path = "/api/v1/deliveries",
    tag = "endpoints",
    params(
        ("endpoint_id" = Option<String>, Query, description = "Only deliveries to this endpoint (`ep_…`)"),
        ("event_id" = Option<String>, Query, description = "Only deliveries of this event"),
        ("status" = Option<DeliveryStatus>, Query, description = "Only deliveries in this state"),
        ("event_type" = Option<String>, Query, description = "Only deliveries of this event type"),
        ("since" = Option<DateTime<Utc>>, Query, description = "Only deliveries created since then (RFC 3339)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 400, response = super::openapi::BadRequest),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn list_deliveries(api: &EndpointsApi, p: &Principal, req: &Request) -> Response {
    let (limit, cursor) = match super::page_params(req, MAX_PAGE, valid_cursor) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let uri = req.uri();
    let mut filter = DeliveryFilter::default();
    if let Some(raw) = query_param(uri, "endpoint_id") {
        match EndpointId::parse(&raw) {
            Some(id) => filter.endpoint_id = Some(id),
            // No endpoint has that id: nothing matches.
            None => return empty_page(),
        }
    }
    if let Some(raw) = query_param(uri, "event_id") {
        match EventId::parse(&raw) {
            Ok(id) => filter.event_id = Some(id),
            Err(_) => return empty_page(),
        }
    }
    if let Some(raw) = query_param(uri, "status") {
        match DeliveryStatus::parse(&raw) {
            Some(s) => filter.status = Some(s),
            None => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "status must be pending, delivered, failed or dead_lettered",
                )
            }
        }
    }
    filter.event_type = query_param(uri, "event_type");
    if let Some(raw) = query_param(uri, "since") {
        match DateTime::parse_from_rfc3339(&raw) {
            Ok(t) => filter.since = Some(t.with_timezone(&Utc)),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "since must be an RFC 3339 time such as 2026-01-31T12:00:00Z",
                )
            }
        }
    }
    match api
        .store
        .list_deliveries(p.org_id.as_str(), &filter, limit, cursor)
        .await
    {
        Ok((page, next)) => json(
            StatusCode::OK,
            &DeliveryPage {
                deliveries: page.iter().map(DeliveryView::from).collect(),
                next_cursor: next,
            },
        ),
        Err(e) => error(e.into()),
    }
}

fn empty_page() -> Response {
    json(
        StatusCode::OK,
        &DeliveryPage {
            deliveries: Vec::new(),
            next_cursor: None,
        },
    )
}

/// One outbound delivery
#[utoipa::path(
    get,
    path = "/api/v1/deliveries/{id}",
    tag = "endpoints",
    params(("id" = DeliveryId, Path, description = "The delivery (`dlv_…`)")),
    responses((status = 200, description = "The delivery", body = DeliveryView)),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn get_delivery(api: &EndpointsApi, org: &str, id: &DeliveryId) -> Response {
    match api.store.get_delivery(org, id).await {
        Ok(Some(d)) => json(StatusCode::OK, &DeliveryView::from(&d)),
        Ok(None) => not_found(),
        Err(e) => error(e.into()),
    }
}

/// Every attempt at a delivery
///
/// Each keeps its time, status code, latency, error and the first 1 KiB of the answer.
#[utoipa::path(
    get,
    path = "/api/v1/deliveries/{id}/attempts",
    tag = "endpoints",
    params(("id" = DeliveryId, Path, description = "The delivery (`dlv_…`)")),
    responses((status = 200, description = "The attempts", body = AttemptList)),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn attempts(api: &EndpointsApi, org: &str, id: &DeliveryId) -> Response {
    // An unknown delivery is a 404, not an empty list.
    match api.store.get_delivery(org, id).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(),
        Err(e) => return error(e.into()),
    }
    match api.store.list_attempts(org, id).await {
        Ok(attempts) => json(
            StatusCode::OK,
            &AttemptList {
                attempts: attempts.iter().collect(),
            },
        ),
        Err(e) => error(e.into()),
    }
}

/// Attempt a delivery again now
#[utoipa::path(
    post,
    path = "/api/v1/deliveries/{id}/retry",
    tag = "endpoints",
    params(("id" = DeliveryId, Path, description = "The delivery (`dlv_…`)")),
    responses(
        (status = 202, description = "A manual attempt is queued", body = RetryQueued),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["webhooks:manage"]))
)]
async fn retry(api: &EndpointsApi, org: &str, id: &DeliveryId) -> Response {
    match api.replay.retry(org, id).await {
        Ok(d) => json(
            StatusCode::ACCEPTED,
            &RetryQueued {
                delivery: DeliveryView::from(&d),
                queued: true,
            },
        ),
        Err(e) => error(e),
    }
}
