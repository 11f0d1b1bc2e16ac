//! `/api/v1/billing/…` (seed 000's table): Checkout and Customer Portal sessions for the
//! caller's org (`billing:manage` or `admin`), and the entitlements any token of an org may
//! read for its own org (another org's id answers 404, as if it did not exist).

use super::{json_body, method_not_allowed, not_found};
use crate::auth::{Authenticator, Scope};
use crate::billing::service::{Billing, Error};
use crate::billing::tiers::Tier;
use crate::http::{json, problem, Request, Response};
use http::{Method, StatusCode};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    tier: String,
    success_url: String,
    cancel_url: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PortalBody {
    return_url: String,
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
        let principal = match self.auth.authenticate(req.headers()).await {
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
                    self.checkout(org, req.body()).await
                } else {
                    self.portal(org, req.body()).await
                }
            }
            Some(rest) if rest.starts_with("entitlements/") => {
                if *req.method() != Method::GET {
                    return method_not_allowed();
                }
                let asked = &rest["entitlements/".len()..];
                // Another org's entitlements do not exist for this caller.
                if asked != org {
                    return not_found();
                }
                match self.billing.entitlements(org).await {
                    Ok(e) => json(StatusCode::OK, &e),
                    Err(e) => error(e),
                }
            }
            _ => not_found(),
        }
    }

    async fn checkout(&self, org: &str, body: &[u8]) -> Response {
        let body: CheckoutBody = match json_body(body) {
            Ok(b) => b,
            Err(msg) => return super::bad_request(msg),
        };
        let tier: Tier = match body.tier.parse() {
            Ok(t) => t,
            Err(e) => return error(Error::Invalid(format!("tier: {e}"))),
        };
        match self
            .billing
            .checkout(org, tier, &body.success_url, &body.cancel_url)
            .await
        {
            Ok(s) => json(
                StatusCode::OK,
                &serde_json::json!({"id": s.id, "url": s.url}),
            ),
            Err(e) => error(e),
        }
    }

    async fn portal(&self, org: &str, body: &[u8]) -> Response {
        let body: PortalBody = match json_body(body) {
            Ok(b) => b,
            Err(msg) => return super::bad_request(msg),
        };
        match self.billing.portal(org, &body.return_url).await {
            Ok(s) => json(StatusCode::OK, &serde_json::json!({"url": s.url})),
            Err(e) => error(e),
        }
    }
}
