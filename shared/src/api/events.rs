//! `POST /api/v1/events` and `GET /api/v1/events/{id}`: publish an event into the caller's
//! org stream (scope `events:write`, `webhooks:manage` or `admin`), and read one back. A
//! publish answers 202 with the new event, or 200 with the one already published under the
//! same id: retrying a publish never creates a second event.

use super::endpoints::error;
use super::{json_body, method_not_allowed, not_found};
use crate::auth::{Authenticator, Principal, Scope};
use crate::http::{json, Request, Response};
use crate::outbound::model::{Event, EventId};
use crate::outbound::publish::{PublishRequest, Publisher};
use crate::ports::outbound::{Appended, OutboundStore};
use http::{Method, StatusCode};
use std::sync::Arc;

pub struct EventsApi {
    auth: Authenticator,
    publisher: Arc<Publisher>,
    store: Arc<dyn OutboundStore>,
}

fn view(e: &Event) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "type": e.event_type,
        "created_at": e.created_at,
        "data": e.data,
        "sequence": e.seq,
    })
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
        let p = match self.auth.authenticate(req.headers()).await {
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
            (Method::POST, ["events"]) => self.publish(&p, &req).await,
            (_, ["events"]) => method_not_allowed(),
            (Method::GET, ["events", id]) => {
                let Ok(id) = EventId::parse(id) else {
                    return not_found();
                };
                match self.store.get_event(p.org_id.as_str(), &id).await {
                    Ok(Some(e)) => json(StatusCode::OK, &view(&e)),
                    Ok(None) => not_found(),
                    Err(e) => error(e.into()),
                }
            }
            (_, ["events", _]) => method_not_allowed(),
            _ => not_found(),
        }
    }

    async fn publish(&self, p: &Principal, req: &Request) -> Response {
        let body: PublishRequest = match json_body(req.body()) {
            Ok(b) => b,
            Err(msg) => return super::bad_request(msg),
        };
        match self.publisher.publish(p.org_id.as_str(), body).await {
            Ok(Appended::Created(e)) => json(StatusCode::ACCEPTED, &view(&e)),
            Ok(Appended::Existing(e)) => json(StatusCode::OK, &view(&e)),
            Err(e) => error(e),
        }
    }
}
