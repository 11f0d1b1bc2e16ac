//! `/api/v1/endpoints…`, `/api/v1/deliveries…` and `/api/v1/event-types`: an org's webhook
//! endpoints (scope `webhooks:manage` or `admin`), what was delivered to them and how each
//! attempt went, replays, and the subscribable event types. A principal only ever sees its
//! own org: another org's id is a 404.

use super::{json_body, method_not_allowed, not_found, query_param};
use crate::auth::{Authenticator, Principal, Scope};
use crate::http::{json, problem, Request, Response};
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

/// An endpoint as the API shows it: never its secret.
#[derive(Debug, Serialize)]
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

/// A delivery as the API shows it.
#[derive(Debug, Serialize)]
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
        let p = match self.auth.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(3).collect(); // after "", "api", "v1"
        if segments.first() == Some(&"event-types") {
            // Anyone of the org may read what exists to subscribe to.
            return match (req.method().clone(), segments.as_slice()) {
                (Method::GET, ["event-types"]) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "event_types": self.endpoints.catalog().types() }),
                ),
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
                Method::POST => self.create(&p, &req).await,
                Method::GET => self.list(&p, &req).await,
                _ => method_not_allowed(),
            },
            ["endpoints", id, rest @ ..] => {
                let Some(id) = EndpointId::parse(id) else {
                    return not_found();
                };
                self.endpoint_route(&p, id, rest, &method, &req).await
            }
            ["deliveries"] => match method {
                Method::GET => self.list_deliveries(&p, &req).await,
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
            (Method::GET, []) => self.answer(self.endpoints.get(org, &id).await, StatusCode::OK),
            (Method::PATCH, []) => {
                let patch: EndpointPatch = match json_body(req.body()) {
                    Ok(b) => b,
                    Err(msg) => return super::bad_request(msg),
                };
                self.answer(self.endpoints.update(org, &id, patch).await, StatusCode::OK)
            }
            (Method::DELETE, []) => match self.endpoints.delete(org, &id).await {
                Ok(()) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "id": id, "deleted": true }),
                ),
                Err(e) => error(e),
            },
            (Method::GET, ["secret"]) => match self.endpoints.secret(org, &id).await {
                Ok(secret) => json(
                    StatusCode::OK,
                    &serde_json::json!({ "id": id, "secret": secret.expose() }),
                ),
                Err(e) => error(e),
            },
            (Method::POST, ["secret", "rotate"]) => match self.endpoints.rotate(org, &id).await {
                Ok((e, secret)) => json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "id": id,
                        "secret": secret.expose(),
                        "previous_secret_valid_until": e.previous_secret.and_then(|p| p.valid_until),
                    }),
                ),
                Err(e) => error(e),
            },
            (Method::POST, ["test"]) => match self.endpoints.test(org, &id).await {
                Ok(d) => json(StatusCode::ACCEPTED, &DeliveryView::from(&d)),
                Err(e) => error(e),
            },
            (Method::POST, ["recover"]) => self.recover(p, &id, req).await,
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
            (Method::GET, []) => match self.store.get_delivery(org, &id).await {
                Ok(Some(d)) => json(StatusCode::OK, &DeliveryView::from(&d)),
                Ok(None) => not_found(),
                Err(e) => error(e.into()),
            },
            (Method::GET, ["attempts"]) => {
                // An unknown delivery is a 404, not an empty list.
                match self.store.get_delivery(org, &id).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return not_found(),
                    Err(e) => return error(e.into()),
                }
                match self.store.list_attempts(org, &id).await {
                    Ok(attempts) => json(
                        StatusCode::OK,
                        &serde_json::json!({ "attempts": attempts.iter().collect::<Vec<&Attempt>>() }),
                    ),
                    Err(e) => error(e.into()),
                }
            }
            (Method::POST, ["retry"]) => match self.replay.retry(org, &id).await {
                Ok(d) => json(
                    StatusCode::ACCEPTED,
                    &serde_json::json!({ "delivery": DeliveryView::from(&d), "queued": true }),
                ),
                Err(e) => error(e),
            },
            (_, [] | ["attempts"] | ["retry"]) => method_not_allowed(),
            _ => not_found(),
        }
    }

    fn answer(&self, result: Result<Endpoint, Error>, status: StatusCode) -> Response {
        match result {
            Ok(e) => json(status, &EndpointView::from(&e)),
            Err(e) => error(e),
        }
    }

    async fn create(&self, p: &Principal, req: &Request) -> Response {
        let body: CreateEndpoint = match json_body(req.body()) {
            Ok(b) => b,
            Err(msg) => return super::bad_request(msg),
        };
        match self.endpoints.create(p.org_id.as_str(), body).await {
            Ok((e, secret)) => {
                let mut view = serde_json::to_value(EndpointView::from(&e)).unwrap_or_default();
                view["secret"] = serde_json::Value::String(secret.expose().to_owned());
                json(StatusCode::CREATED, &view)
            }
            Err(e) => error(e),
        }
    }

    async fn list(&self, p: &Principal, req: &Request) -> Response {
        let (limit, cursor) = match super::page_params(req, MAX_PAGE, valid_cursor) {
            Ok(v) => v,
            Err(res) => return *res,
        };
        match self.endpoints.list(p.org_id.as_str(), limit, cursor).await {
            Ok((page, next)) => {
                let items: Vec<EndpointView<'_>> = page.iter().map(EndpointView::from).collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "endpoints": items, "next_cursor": next }),
                )
            }
            Err(e) => error(e),
        }
    }

    async fn list_deliveries(&self, p: &Principal, req: &Request) -> Response {
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
        match self
            .store
            .list_deliveries(p.org_id.as_str(), &filter, limit, cursor)
            .await
        {
            Ok((page, next)) => {
                let items: Vec<DeliveryView<'_>> = page.iter().map(DeliveryView::from).collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "deliveries": items, "next_cursor": next }),
                )
            }
            Err(e) => error(e.into()),
        }
    }

    async fn recover(&self, p: &Principal, id: &EndpointId, req: &Request) -> Response {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            since: String,
        }
        let body: Body = match json_body(req.body()) {
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
        match self.replay.recover(p.org_id.as_str(), id, since).await {
            Ok(n) => json(
                StatusCode::ACCEPTED,
                &serde_json::json!({ "endpoint_id": id, "since": since, "queued": n }),
            ),
            Err(e) => error(e),
        }
    }
}

fn empty_page() -> Response {
    json(
        StatusCode::OK,
        &serde_json::json!({ "deliveries": [], "next_cursor": null }),
    )
}
