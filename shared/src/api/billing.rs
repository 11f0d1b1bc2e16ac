//! `/api/v1/billing/…` (seed 000's table): Checkout and Customer Portal sessions for the
//! caller's org (`billing:manage` or `admin`), and the entitlements any token of an org may
//! read for its own org (another org's id answers 404, as if it did not exist).

use super::{json_body, method_not_allowed, not_found};
use crate::auth::{Authenticator, Scope};
use crate::billing::service::{Billing, Entitlements, Error};
use crate::billing::tiers::Tier;
use crate::http::{json, problem, Problem, Request, Response};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// `POST /api/v1/billing/checkout`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    /// `team` or `enterprise`.
    tier: String,
    /// Where Stripe sends the browser after paying.
    success_url: String,
    /// Where Stripe sends the browser if the user gives up.
    cancel_url: String,
}

/// `POST /api/v1/billing/portal`'s body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PortalBody {
    /// Where the portal's "back" link goes.
    return_url: String,
}

/// A Stripe Checkout Session to send the browser to.
#[derive(Debug, Serialize, ToSchema)]
struct CheckoutSession<'a> {
    id: &'a str,
    url: &'a str,
}

/// A Customer Portal session to send the browser to.
#[derive(Debug, Serialize, ToSchema)]
struct PortalSession<'a> {
    url: &'a str,
}

/// The answer of a failed billing call.
fn error(e: Error) -> Response {
    match e {
        Error::Invalid(msg) => problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", msg),
        Error::Conflict(msg) => problem(StatusCode::CONFLICT, "conflict", msg),
        Error::Stripe(msg) => {
            tracing::warn!(error = %msg, "Stripe refused a billing call");
            problem(StatusCode::BAD_GATEWAY, "stripe_error", msg)
        }
        Error::Unavailable(detail) => {
            tracing::error!(error = %detail, "billing API could not complete a call");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                detail_for_user(&detail),
            )
        }
    }
}

/// A store failure says "try again"; billing that is not configured says so.
fn detail_for_user(detail: &str) -> String {
    if detail.contains("not configured") {
        detail.to_owned()
    } else {
        "try again shortly".to_owned()
    }
}

pub struct BillingApi {
    auth: Authenticator,
    billing: Arc<Billing>,
}

impl BillingApi {
    pub fn new(auth: Authenticator, billing: Arc<Billing>) -> Self {
        Self { auth, billing }
    }

    pub async fn handle(&self, req: Request) -> Response {
        let principal = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let path = req.uri().path().trim_end_matches('/').to_owned();
        let org = principal.org_id.as_str();
        match path.strip_prefix("/api/v1/billing/") {
            Some("checkout") | Some("portal") => {
                if *req.method() != Method::POST {
                    return method_not_allowed();
                }
                if let Err(e) = principal.require(Scope::BillingManage) {
                    return e.into_response();
                }
                if path.ends_with("checkout") {
                    checkout(self, org, req.body()).await
                } else {
                    portal(self, org, req.body()).await
                }
            }
            Some(rest) if rest.starts_with("entitlements/") => {
                if *req.method() != Method::GET {
                    return method_not_allowed();
                }
                entitlements(self, org, &rest["entitlements/".len()..]).await
            }
            _ => not_found(),
        }
    }
}

/// Start a subscription
///
/// A Stripe Checkout Session (subscription mode, the tier's price) for the caller's org; its
/// Stripe customer is created once, with `metadata.org_id`, and reused.
#[utoipa::path(
    post,
    path = "/api/v1/billing/checkout",
    tag = "billing",
    request_body = CheckoutBody,
    responses(
        (status = 200, description = "Send the browser to `url`", body = CheckoutSession),
        (status = 409, description = "The org's billing state does not allow this now", body = Problem),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 502, response = super::openapi::ProviderError),
    ),
    security(("bearer" = ["billing:manage"]))
)]
async fn checkout(api: &BillingApi, org: &str, body: &[u8]) -> Response {
    let body: CheckoutBody = match json_body(body) {
        Ok(b) => b,
        Err(msg) => return super::bad_request(msg),
    };
    let tier: Tier = match body.tier.parse() {
        Ok(t) => t,
        Err(e) => return error(Error::Invalid(format!("tier: {e}"))),
    };
    match api
        .billing
        .checkout(org, tier, &body.success_url, &body.cancel_url)
        .await
    {
        Ok(s) => json(
            StatusCode::OK,
            &CheckoutSession {
                id: &s.id,
                url: &s.url,
            },
        ),
        Err(e) => error(e),
    }
}

/// Open the Customer Portal
#[utoipa::path(
    post,
    path = "/api/v1/billing/portal",
    tag = "billing",
    request_body = PortalBody,
    responses(
        (status = 200, description = "Send the browser to `url`", body = PortalSession),
        (status = 409, description = "The org has no Stripe customer yet", body = Problem),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 502, response = super::openapi::ProviderError),
    ),
    security(("bearer" = ["billing:manage"]))
)]
async fn portal(api: &BillingApi, org: &str, body: &[u8]) -> Response {
    let body: PortalBody = match json_body(body) {
        Ok(b) => b,
        Err(msg) => return super::bad_request(msg),
    };
    match api.billing.portal(org, &body.return_url).await {
        Ok(s) => json(StatusCode::OK, &PortalSession { url: &s.url }),
        Err(e) => error(e),
    }
}

/// What the org may use, and why
///
/// Its tier, status, features, limits and this month's usage. Any token of the org may read
/// its own; another org's id answers 404.
#[utoipa::path(
    get,
    path = "/api/v1/billing/entitlements/{org_id}",
    tag = "billing",
    params(("org_id" = String, Path, description = "The caller's own org")),
    responses((status = 200, description = "The entitlements", body = Entitlements)),
    security(("bearer" = []))
)]
async fn entitlements(api: &BillingApi, org: &str, asked: &str) -> Response {
    // Another org's entitlements do not exist for this caller.
    if asked != org {
        return not_found();
    }
    match api.billing.entitlements(org).await {
        Ok(e) => json(StatusCode::OK, &e),
        Err(e) => error(e),
    }
}
