//! `POST /api/v1/events` and `GET /api/v1/events/{id}`: publish an event into the caller's
//! org stream (scope `events:write`, `webhooks:manage` or `admin`), and read one back. A
//! publish answers 202 with the new event, or 200 with the one already published under the
//! same id: retrying a publish never creates a second event.

use super::endpoints::error;
use super::{json_body, method_not_allowed, not_found};
use crate::auth::{Authenticator, Principal, Scope};
use crate::http::{json, Request, Response};
use crate::outbound::model::{Event, EventData, EventId};
use crate::outbound::publish::{PublishRequest, Publisher};
use crate::ports::outbound::{Appended, OutboundStore};
use http::{Method, StatusCode};
use std::sync::Arc;

pub struct EventsApi {
    auth: Authenticator,
    publisher: Arc<Publisher>,
    store: Arc<dyn OutboundStore>,
}

/// An event as the API shows it (seed 003's envelope, and its place in the org's stream).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[schema(as = Event)]
struct EventView<'a> {
    id: &'a EventId,
    #[serde(rename = "type")]
    event_type: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
    /// What the publisher sent.
    #[schema(value_type = serde_json::Value)]
    data: &'a EventData,
    /// Its place in the org's stream: gap-free, from 1.
    sequence: u64,
}

fn view(e: &Event) -> EventView<'_> {
    EventView {
        id: &e.id,
        event_type: &e.event_type,
        created_at: e.created_at,
        data: &e.data,
        sequence: e.seq,
    }
}

/// `events:write` or `webhooks:manage` (`admin` holds both).
fn may_publish(p: &Principal) -> bool {
    p.has(Scope::EventsWrite) || p.has(Scope::WebhooksManage)
}

impl EventsApi {
    pub fn new(
        auth: Authenticator,
        publisher: Arc<Publisher>,
        store: Arc<dyn OutboundStore>,
    ) -> Self {
        Self {
            auth,
            publisher,
            store,
        }
    }

    pub async fn handle(&self, req: Request) -> Response {
        let p = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if !may_publish(&p) {
            return crate::auth::AuthError::Forbidden {
                needed: Scope::EventsWrite,
            }
            .into_response();
        }
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(3).collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::POST, ["events"]) => publish(self, &p, &req).await,
            (_, ["events"]) => method_not_allowed(),
            (Method::GET, ["events", id]) => get(self, &p, id).await,
            (_, ["events", _]) => method_not_allowed(),
            _ => not_found(),
        }
    }
}

/// Publish an event
///
/// Into the org's stream, for every endpoint subscribed to its type. The same `id` again
/// answers 200 with the event first published under it, and publishes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/events",
    tag = "events",
    request_body = PublishRequest,
    responses(
        (status = 202, description = "Published", body = EventView),
        (status = 200, description = "Already published under this `id`: the first one", body = EventView),
        (status = 402, response = super::openapi::PlanLimit),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["events:write"]), ("bearer" = ["webhooks:manage"]))
)]
async fn publish(api: &EventsApi, p: &Principal, req: &Request) -> Response {
    let body: PublishRequest = match json_body(req.body()) {
        Ok(b) => b,
        Err(msg) => return super::bad_request(msg),
    };
    match api.publisher.publish(p.org_id.as_str(), body).await {
        Ok(Appended::Created(e)) => json(StatusCode::ACCEPTED, &view(&e)),
        Ok(Appended::Existing(e)) => json(StatusCode::OK, &view(&e)),
        Err(e) => error(e),
    }
}

/// One event
#[utoipa::path(
    get,
    path = "/api/v1/events/{id}",
    tag = "events",
    params(("id" = EventId, Path, description = "The event's id")),
    responses((status = 200, description = "The event", body = EventView)),
    security(("bearer" = ["events:write"]), ("bearer" = ["webhooks:manage"]))
)]
async fn get(api: &EventsApi, p: &Principal, raw_id: &str) -> Response {
    let Ok(id) = EventId::parse(raw_id) else {
        return not_found();
    };
    match api.store.get_event(p.org_id.as_str(), &id).await {
        Ok(Some(e)) => json(StatusCode::OK, &view(&e)),
        Ok(None) => not_found(),
        Err(e) => error(e.into()),
    }
}
