//! `/api/v1/webhooks/deliveries…`: an org's inbound delivery log (its connected repositories'
//! deliveries and its own Stripe events), one delivery with its headers and payload, and
//! replays. Served by the repositories API; another org's delivery is a 404, never a 403.

use super::{bad_request, method_not_allowed, not_found, query_param};
use crate::auth::{Principal, Scope};
use crate::connections::ConnectionId;
use crate::delivery_log::{DeliveryDetail, DeliveryLog, DeliveryView, LogError};
use crate::http::{json, problem, Problem, Request, Response};
use crate::model::{DeliveryKey, DeliveryStatus, Source};
use crate::ports::store::{valid_log_sort_key, LogQuery};
use base64::Engine;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// The most deliveries one page holds.
pub const MAX_PAGE: usize = 200;

/// The query parameters the list takes; any other is refused, so a typo is not ignored.
const LIST_PARAMS: [&str; 7] = [
    "connection_id",
    "source",
    "event_type",
    "status",
    "since",
    "limit",
    "cursor",
];

fn encode_cursor(sort_key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sort_key)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(raw)
        .ok()
        .filter(|k| valid_log_sort_key(k))
}

fn valid_cursor(cursor: &str) -> bool {
    decode_cursor(cursor).is_some()
}

fn error(e: LogError) -> Response {
    match e {
        LogError::NotFound => not_found(),
        LogError::PayloadExpired { .. } => {
            problem(StatusCode::GONE, "payload_expired", e.to_string())
        }
        LogError::InFlight => problem(StatusCode::CONFLICT, "replay_in_progress", e.to_string()),
        LogError::Unavailable(detail) => {
            tracing::error!(error = %detail, "delivery log API could not complete a call");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "try again shortly",
            )
        }
    }
}

pub struct DeliveriesApi {
    log: Arc<DeliveryLog>,
}

impl DeliveriesApi {
    pub fn new(log: Arc<DeliveryLog>) -> Self {
        Self { log }
    }

    pub fn log(&self) -> &Arc<DeliveryLog> {
        &self.log
    }

    /// `segments` is the path after `/api/v1/webhooks/deliveries`.
    pub async fn handle(&self, p: &Principal, req: &Request, segments: &[&str]) -> Response {
        let (scope, method) = match segments {
            [] | [_] => (Scope::ReposRead, Method::GET),
            [_, "replay"] => (Scope::ReposWrite, Method::POST),
            _ => return not_found(),
        };
        if *req.method() != method {
            return method_not_allowed();
        }
        if let Err(e) = p.require(scope) {
            return e.into_response();
        }
        let org = p.org_id.as_str();
        // A malformed id is as unknown as another org's.
        let key = match segments.first().map(|id| DeliveryKey::from_log_id(id)) {
            None => return list(self, org, req).await,
            Some(Some(key)) => key,
            Some(None) => return not_found(),
        };
        if segments.len() == 1 {
            detail(self, org, &key).await
        } else {
            replay(self, org, &key).await
        }
    }
}

/// One page of the org's inbound deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = InboundDeliveryPage)]
struct DeliveryPage<'a> {
    deliveries: Vec<DeliveryView<'a>>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// A replay was queued: the worker's run is the delivery's next attempt.
#[derive(Debug, Serialize, ToSchema)]
struct ReplayQueued {
    /// The delivery (`whd_…`).
    id: String,
    /// `queued`.
    status: &'static str,
    /// The attempt the replay will be.
    attempt: u32,
}

/// The org's inbound deliveries
///
/// Newest first. Deliveries belong to an org when its connected repository's secret verified
/// them, or when they are Stripe events applied to its billing. A bad filter, `limit` or
/// `cursor`, or an unknown parameter, answers 400 naming it.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries",
    tag = "delivery log",
    params(
        ("connection_id" = Option<ConnectionId>, Query, description = "Only this connection's deliveries"),
        ("source" = Option<Source>, Query, description = "Only this provider's"),
        ("event_type" = Option<String>, Query, min_length = 1, max_length = 200, description = "Only this event type"),
        ("status" = Option<DeliveryStatus>, Query, description = "Only deliveries in this state"),
        ("since" = Option<DateTime<Utc>>, Query, description = "Only deliveries received since then (RFC 3339)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Page size (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = DeliveryPage),
        (status = 400, response = super::openapi::BadRequest),
    ),
    security(("bearer" = ["repos:read"]))
)]
async fn list(api: &DeliveriesApi, org: &str, req: &Request) -> Response {
    let uri = req.uri();
    if let Some(query) = uri.query() {
        for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
            if !LIST_PARAMS.contains(&name.as_ref()) {
                return bad_request(format!(
                    "unknown query parameter {name:?}: use {}",
                    LIST_PARAMS.join(", ")
                ));
            }
        }
    }
    let (limit, cursor) = match super::page_params(req, MAX_PAGE, valid_cursor) {
        Ok(v) => v,
        Err(res) => return *res,
    };
    let connection_id = match query_param(uri, "connection_id") {
        None => None,
        Some(raw) => match ConnectionId::parse(&raw) {
            Some(id) => Some(id.as_str().to_owned()),
            None => {
                return bad_request(
                    "connection_id must be a connection id (rpc_…) from /api/v1/repositories/connections",
                )
            }
        },
    };
    let source = match query_param(uri, "source").map(|s| s.parse::<Source>()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => return bad_request(format!("source: {e}")),
    };
    let status = match query_param(uri, "status").map(|s| s.parse::<DeliveryStatus>()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            return bad_request(
                "status must be one of received, queued, processed, failed, skipped",
            )
        }
    };
    let event_type = match query_param(uri, "event_type") {
        Some(e) if e.trim().is_empty() || e.len() > 200 => {
            return bad_request("event_type must be 1 to 200 characters")
        }
        other => other,
    };
    let since = match query_param(uri, "since").map(|s| DateTime::parse_from_rfc3339(&s)) {
        None => None,
        Some(Ok(t)) => Some(t.with_timezone(&Utc)),
        Some(Err(_)) => {
            return bad_request("since must be an RFC 3339 time such as 2026-01-31T12:00:00Z")
        }
    };
    let query = LogQuery {
        org_id: org.to_owned(),
        connection_id,
        source,
        event_type,
        status,
        since,
        limit,
        after: cursor.as_deref().and_then(decode_cursor),
        now: api.log.now(),
    };
    match api.log.list(&query).await {
        Ok(page) => json(
            StatusCode::OK,
            &DeliveryPage {
                deliveries: page.deliveries.iter().map(DeliveryView::from).collect(),
                next_cursor: page.next.as_deref().map(encode_cursor),
            },
        ),
        Err(e) => error(e),
    }
}

/// One inbound delivery, with what the provider sent
///
/// Headers as the provider sent them (signature and token headers read `[redacted]`) and the
/// payload exactly as received (`payload_encoding`: `utf8`, or `base64` for bytes that are not
/// UTF-8); after the retention both are `null` and `payload_expired` is true.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/deliveries/{id}",
    tag = "delivery log",
    params(("id" = String, Path, pattern = "^whd_[A-Za-z0-9_-]+$", description = "The delivery (`whd_…`)")),
    responses((status = 200, description = "The delivery", body = DeliveryDetail)),
    security(("bearer" = ["repos:read"]))
)]
async fn detail(api: &DeliveriesApi, org: &str, key: &DeliveryKey) -> Response {
    match api.log.detail(Some(org), key).await {
        Ok((d, payload)) => json(StatusCode::OK, &DeliveryDetail::new(&d, payload.as_ref())),
        Err(e) => error(e),
    }
}

/// Replay an inbound delivery
///
/// The stored payload goes back on the worker's queue, the path a first delivery takes.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/deliveries/{id}/replay",
    tag = "delivery log",
    params(("id" = String, Path, pattern = "^whd_[A-Za-z0-9_-]+$", description = "The delivery (`whd_…`)")),
    responses(
        (status = 202, description = "Queued", body = ReplayQueued),
        (status = 409, description = "`replay_in_progress`: the delivery is queued or being processed", body = Problem),
        (status = 410, description = "`payload_expired`: the payload is past its retention", body = Problem),
    ),
    security(("bearer" = ["repos:write"]))
)]
async fn replay(api: &DeliveriesApi, org: &str, key: &DeliveryKey) -> Response {
    match api.log.replay(Some(org), key).await {
        Ok(before) => json(
            StatusCode::ACCEPTED,
            &ReplayQueued {
                id: key.log_id(),
                status: "queued",
                attempt: before.attempts + 1,
            },
        ),
        Err(e) => error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_nothing_else_passes() {
        let key = "001700000000123#github#abc";
        let c = encode_cursor(key);
        assert_eq!(decode_cursor(&c).as_deref(), Some(key));
        for bad in [
            "",
            "abc",
            &encode_cursor("17#github#x"),
            &encode_cursor("001700000000123#nope#x"),
        ] {
            assert!(!valid_cursor(bad), "{bad}");
        }
    }
}
