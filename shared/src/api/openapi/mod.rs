//! The OpenAPI 3.1 document of every route the servers answer, generated from the
//! `#[utoipa::path]` annotations on the handlers. `openapi.json` at the repository root is its
//! checked-in copy (`hookline openapi > openapi.json` writes it), served at
//! `GET /api/v1/openapi.json`; the local server routes exactly the paths the document names.

mod webhooks;

use crate::http::{json, Problem, Request, Response};
use http::{header, HeaderValue, Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::{OpenApi, ToResponse, ToSchema};

/// Where the document is served.
pub const PATH: &str = "/api/v1/openapi.json";

/// The checked-in document, as the servers answer it (a test keeps it equal to [`to_json`]).
pub const CHECKED_IN: &str = include_str!("../../../../openapi.json");

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Hookline API",
        version = "1",
        description = "Hookline receives provider webhooks (GitHub, GitLab, Jira, Stripe, Twilio, \
WhatsApp), keeps an org's delivery log, manages its repositories' hooks, and sends its own \
webhooks to the org's endpoints.\n\nEvery `/api/v1` route but the provider webhooks, the OAuth \
callback and this document needs `Authorization: Bearer <JWT>`; the token's org is the only \
one a request can see or change (another org's id answers 404). A scope listed on an \
operation is the one it needs; `admin` holds every scope but `licenses:issue`. Errors are \
JSON: `{\"error\": \"<code>\", \"message\": \"<what to fix>\"}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        webhooks::github,
        webhooks::gitlab,
        webhooks::jira,
        webhooks::stripe,
        webhooks::twilio,
        webhooks::whatsapp_handshake,
        webhooks::whatsapp,
        super::deliveries::list,
        super::deliveries::detail,
        super::deliveries::replay,
        super::repositories::connect,
        super::repositories::list,
        super::repositories::get,
        super::repositories::update,
        super::repositories::disconnect,
        super::repositories::status,
        super::repositories::retry,
        super::repositories::rotate,
        super::repositories::put_token,
        super::oauth::authorize,
        super::oauth::callback,
        super::incidents::list,
        super::incidents::get,
        super::endpoints::event_types,
        super::endpoints::create,
        super::endpoints::list,
        super::endpoints::get,
        super::endpoints::update,
        super::endpoints::delete,
        super::endpoints::secret,
        super::endpoints::rotate_secret,
        super::endpoints::test,
        super::endpoints::recover,
        super::endpoints::list_deliveries,
        super::endpoints::get_delivery,
        super::endpoints::attempts,
        super::endpoints::retry,
        super::events::publish,
        super::events::get,
        super::org::get,
        super::org::patch,
        super::billing::checkout,
        super::billing::portal,
        super::billing::entitlements,
        super::licenses::issue,
        document_route,
        healthz,
    ),
    components(
        schemas(Problem, super::PlanLimitReached),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            PayloadTooLarge,
            Unprocessable,
            PlanLimit,
            RateLimited,
            ProviderError,
            Unavailable,
        )
    ),
    tags(
        (name = "webhooks", description = "Provider deliveries: verified over the exact bytes, recorded once, queued."),
        (name = "delivery log", description = "The org's inbound deliveries, their payloads, and replays."),
        (name = "repositories", description = "Repository connections whose hooks Hookline manages."),
        (name = "oauth", description = "Connecting a GitHub or GitLab account."),
        (name = "incidents", description = "Failed workflow runs and pipelines of connected repositories."),
        (name = "endpoints", description = "The org's webhook endpoints, what was sent to them, and retries."),
        (name = "events", description = "Publishing the org's own events to its endpoints."),
        (name = "org", description = "The org's profile."),
        (name = "billing", description = "Checkout, the Customer Portal and entitlements."),
        (name = "licences", description = "Offline licences for self-hosted deployments (the operator's)."),
        (name = "meta", description = "This document and the health check."),
    )
)]
struct ApiDoc;

/// `limit` and `cursor`: a list route's page.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // read by `api::page_params`; this carries their description
pub struct Page {
    /// How many per page (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// 400: a parameter or the body is not what the route takes; `message` says which.
#[derive(ToResponse)]
#[response(
    description = "A parameter or the body is not what this route takes; `message` says which"
)]
pub struct BadRequest(pub Problem<'static>);

/// 401: no bearer token, or one that is malformed, expired or not signed by a trusted key.
#[derive(ToResponse)]
#[response(
    description = "No bearer token, or one that is malformed, expired or signed by another key",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"hookline\"`, with the RFC 6750 error"))
)]
pub struct Unauthorized(pub Problem<'static>);

/// 403: the token lacks the scope the operation needs.
#[derive(ToResponse)]
#[response(
    description = "The token lacks the scope this operation needs",
    headers(("WWW-Authenticate" = String, description = "`error=\"insufficient_scope\"` and the scope needed"))
)]
pub struct Forbidden(pub Problem<'static>);

/// 404: no such record in the caller's org (another org's id is as unknown as a made-up one).
#[derive(ToResponse)]
#[response(description = "No such record in the caller's org: another org's id answers the same")]
pub struct NotFound(pub Problem<'static>);

/// 413: the body is larger than the route takes.
#[derive(ToResponse)]
#[response(description = "The body is larger than this route takes")]
pub struct PayloadTooLarge(pub Problem<'static>);

/// 422: the body is well-formed but a value is refused; `message` says which and why.
#[derive(ToResponse)]
#[response(
    description = "The body is well-formed but a value is refused; `message` says which and why"
)]
pub struct Unprocessable(pub Problem<'static>);

/// 402: the org's plan allows no more; nothing was created.
#[derive(ToResponse)]
#[response(description = "The org's plan allows no more of this; nothing was created")]
pub struct PlanLimit(pub super::PlanLimitReached);

/// 429: the org's request rate is used up (`HOOKLINE_API_RATE_LIMIT`).
#[derive(ToResponse)]
#[response(
    description = "The org has used up its request rate (`HOOKLINE_API_RATE_LIMIT`, per org); \
try again after `Retry-After` seconds",
    headers(
        ("Retry-After" = u64, description = "Seconds until a request will be accepted"),
        ("RateLimit-Limit" = u64, description = "Requests the org may make per window"),
        ("RateLimit-Remaining" = u64, description = "Requests left in this window"),
        ("RateLimit-Reset" = u64, description = "Seconds until the window resets"),
    )
)]
pub struct RateLimited(pub Problem<'static>);

/// 502: GitHub, GitLab or Stripe refused or failed the call; `message` is theirs, never a key.
#[derive(ToResponse)]
#[response(
    description = "The provider (GitHub, GitLab, Stripe) refused or failed the call; \
`message` says what it said"
)]
pub struct ProviderError(pub Problem<'static>);

/// 503: a store, queue or key service is unavailable, or the route is not configured here.
#[derive(ToResponse)]
#[response(
    description = "A store, queue or key service is unavailable (try again), or this route is not \
configured on this server (`message` names what to set)",
    headers(("Retry-After" = u64, description = "Seconds to wait before trying again, when it is worth it"))
)]
pub struct Unavailable(pub Problem<'static>);

/// This document
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI document", content_type = "application/json", body = Object)),
)]
#[allow(dead_code)] // the route is [`serve`]; this carries its description
fn document_route() {}

/// `GET /healthz`'s body.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: &'static str,
}

/// Health check
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)),
)]
pub fn healthz() -> Response {
    json(StatusCode::OK, &Health { status: "ok" })
}

/// `GET /api/v1/openapi.json`: the checked-in document, to anyone (it holds no secret).
pub fn serve(req: &Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return super::method_not_allowed();
    }
    let mut res = http::Response::new(bytes::Bytes::from_static(CHECKED_IN.as_bytes()));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// The document, generated from the annotations: every operation that needs a token also
/// answers 401, 403 (when it names a scope), 429 and 503; every one that takes a body 400 and
/// 413; every one with a path parameter 404. Operation ids are the handler's name after its
/// tag (`endpoints_list`). Keys are sorted, so the text is the same however serde_json was
/// built.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serialises");
    doc["components"]["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "A JWT whose `org_id` claim names the org and whose `scope` claim \
    lists the scopes (`repos:read`, `repos:write`, `webhooks:manage`, `events:write`, \
    `billing:manage`, `admin`, `licenses:issue`). Locally, `hookline token --org … --user … \
    --scopes …` prints one.",
        }
    });
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                add_common_responses(path, op);
                qualify_operation_id(op);
            }
        }
    }
    doc.sort_all_objects();
    doc
}

/// Handlers of different groups share names (`list`, `get`): the tag makes each id unique.
fn qualify_operation_id(op: &mut Value) {
    let tag = op["tags"][0].as_str().unwrap_or_default().replace(' ', "_");
    if let Some(id) = op["operationId"].as_str() {
        op["operationId"] = Value::String(format!("{tag}_{id}"));
    }
}

fn add_common_responses(path: &str, op: &mut Value) {
    let security = op["security"].as_array().cloned().unwrap_or_default();
    let secured = !security.is_empty();
    let scoped = security.iter().any(|req| {
        req.as_object().is_some_and(|r| {
            r.values()
                .any(|s| s.as_array().is_some_and(|s| !s.is_empty()))
        })
    });
    let has_body = op.get("requestBody").is_some();
    let Some(responses) = op["responses"].as_object_mut() else {
        return;
    };
    let mut add = |status: &str, name: &str| {
        responses
            .entry(status)
            .or_insert_with(|| json!({ "$ref": format!("#/components/responses/{name}") }));
    };
    if secured {
        add("401", "Unauthorized");
        add("429", "RateLimited");
        add("503", "Unavailable");
        if scoped {
            add("403", "Forbidden");
        }
        if has_body {
            add("400", "BadRequest");
            add("413", "PayloadTooLarge");
        }
        if path.contains('{') {
            add("404", "NotFound");
        }
    }
}

/// The document as `openapi.json` holds it: pretty JSON and a final newline.
pub fn to_json() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("the document serialises");
    text.push('\n');
    text
}

/// One operation of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Upper case: `GET`, `POST`, …
    pub method: String,
    /// As the document writes it: `/api/v1/endpoints/{id}`.
    pub path: String,
    /// Its first tag (`webhooks` for the provider routes).
    pub tag: String,
}

/// Every operation the document describes.
pub fn operations() -> Vec<Operation> {
    let doc = document();
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            if matches!(
                method.as_str(),
                "get" | "put" | "post" | "delete" | "patch" | "head" | "options"
            ) {
                ops.push(Operation {
                    method: method.to_uppercase(),
                    path: path.clone(),
                    tag: op["tags"][0].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
    }
    ops
}

/// The paths of `ops` at or below `prefix` (after a `/`), but the provider webhook routes,
/// which the pipeline serves: the local server routes these, and nothing else, to the
/// handler of the route group at `prefix`.
pub fn paths_under(ops: &[Operation], prefix: &str) -> Vec<String> {
    let mut paths: Vec<String> = ops
        .iter()
        .filter(|op| op.tag != WEBHOOKS_TAG)
        .map(|op| op.path.clone())
        .filter(|p| {
            p == prefix
                || p.strip_prefix(prefix)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The tag of the provider webhook routes.
pub const WEBHOOKS_TAG: &str = "webhooks";
