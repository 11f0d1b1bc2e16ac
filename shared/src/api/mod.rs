//! The authenticated `/api/v1` routes that are not provider webhooks. Every handler takes a
//! request with its raw body and answers a response, as the webhook pipeline does, so it runs
//! under `lambda_http` and in the local server alike.

pub mod billing;
pub mod deliveries;
pub mod endpoints;
pub mod events;
pub mod incidents;
pub mod licenses;
pub mod oauth;
pub mod openapi;
pub mod org;
pub mod ratelimit;
pub mod repositories;

use crate::http::{problem, Response};
use http::StatusCode;

/// The answer to a route that exists with another method.
pub(crate) fn method_not_allowed() -> Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

pub(crate) fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route or record",
    )
}

/// 402's body: the org's plan allows no more of `resource`; nothing was created.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PlanLimitReached {
    /// `plan_limit_reached`.
    pub error: &'static str,
    /// How many of `resource` the plan allows.
    pub limit: u64,
    pub resource: crate::billing::plan::Limited,
    pub tier: crate::billing::tiers::Tier,
    /// Where to upgrade: `/api/v1/billing/checkout`.
    pub upgrade: &'static str,
    pub message: String,
}

/// 402: the org's plan allows no more of this; nothing was created. The fields are a
/// contract: `error`, `limit`, `upgrade` (and `resource`, `tier`, `message` to read).
pub(crate) fn plan_limit(limit: &crate::billing::plan::PlanLimit) -> Response {
    crate::http::json(
        StatusCode::PAYMENT_REQUIRED,
        &PlanLimitReached {
            error: "plan_limit_reached",
            limit: limit.limit,
            resource: limit.what,
            tier: limit.tier,
            upgrade: "/api/v1/billing/checkout",
            message: limit.to_string(),
        },
    )
}

/// A 400 that says what to fix.
pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    problem(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// Parse a JSON body into `T`, or say what is wrong with it (never quoting the body).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => {
                // Field names from serde's message are safe; values never appear in it for
                // unknown or missing fields.
                e.to_string()
                    .split(" at line")
                    .next()
                    .unwrap_or("invalid field")
                    .to_string()
            }
            _ => format!(
                "the body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ),
        };
        what
    })
}

/// One query parameter, decoded.
pub(crate) fn query_param(uri: &http::Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `limit` (1..=`max`, default 50) and `cursor` from a list route's query, or the 400 that
/// says what is wrong with them; `valid_cursor` tells the store's cursors from anything else.
pub(crate) fn page_params(
    req: &crate::http::Request,
    max: usize,
    valid_cursor: fn(&str) -> bool,
) -> Result<(usize, Option<String>), Box<Response>> {
    let limit = match query_param(req.uri(), "limit").map(|l| l.parse::<usize>()) {
        None => 50,
        Some(Ok(l)) if (1..=max).contains(&l) => l,
        Some(_) => {
            return Err(Box::new(bad_request(format!(
                "limit must be a number from 1 to {max}"
            ))))
        }
    };
    let cursor = query_param(req.uri(), "cursor");
    if cursor.as_deref().is_some_and(|c| !valid_cursor(c)) {
        return Err(Box::new(bad_request("cursor is not one this API returned")));
    }
    Ok((limit, cursor))
}
