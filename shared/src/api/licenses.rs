//! `POST /api/v1/licenses`: the operator mints an offline licence for a self-hosted customer.
//! Only a token that names the `licenses:issue` scope may (an org's `admin` never implies it);
//! without `LICENSE_PRIVATE_KEY` the route answers 503 saying so.

use super::{json_body, method_not_allowed, not_found};
use crate::auth::{Authenticator, Scope};
use crate::billing::licence::{LicenceKey, LicenceRequest, MAX_SEATS};
use crate::billing::tiers::{Tier, TierTable};
use crate::clock::Clock;
use crate::http::{json, problem, Request, Response};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde_json::{Map, Value};
use std::sync::Arc;

/// The tier a licence is for when the request names none.
pub const DEFAULT_TIER: Tier = Tier::Team;
/// The seats a licence grants when the request names none.
pub const DEFAULT_SEATS: u32 = 10;
/// How long a licence lasts when the request names no `expires_at`.
pub const DEFAULT_VALIDITY: chrono::Duration = chrono::Duration::days(365);

const FIELDS: [&str; 4] = ["org_id", "tier", "seats", "expires_at"];

fn invalid(message: impl Into<String>) -> Response {
    problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

pub struct LicensesApi {
    auth: Authenticator,
    /// `None` when `LICENSE_PRIVATE_KEY` is not configured: the route then answers 503.
    key: Option<LicenceKey>,
    tiers: TierTable,
    clock: Arc<dyn Clock>,
}

impl LicensesApi {
    pub fn new(
        auth: Authenticator,
        key: Option<LicenceKey>,
        tiers: TierTable,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            auth,
            key,
            tiers,
            clock,
        }
    }

    pub async fn handle(&self, req: Request) -> Response {
        let principal = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if req.uri().path().trim_end_matches('/') != "/api/v1/licenses" {
            return not_found();
        }
        if let Err(e) = principal.require(Scope::LicensesIssue) {
            return e.into_response();
        }
        if req.method() != Method::POST {
            return method_not_allowed();
        }
        issue(self, &principal, &req).await
    }
}

/// `POST /api/v1/licenses`'s body (read field by field, so each wrong one is named).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `parse_request` reads the fields; this carries their description
struct LicenceBody {
    /// The org the licence is for.
    #[schema(min_length = 1)]
    org_id: String,
    /// `free`, `team` (the default) or `enterprise`.
    tier: Option<Tier>,
    /// Seats (default 10).
    #[schema(minimum = 1, maximum = 1_000_000)]
    seats: Option<u32>,
    /// When it expires (RFC 3339, in the future; default a year from now).
    expires_at: Option<DateTime<Utc>>,
}

/// Issue an offline licence
///
/// Only a token naming `licenses:issue` may (an org's `admin` never implies it): the
/// deployment's identity provider grants it to the operator's staff.
#[utoipa::path(
    post,
    path = "/api/v1/licenses",
    tag = "licences",
    request_body = LicenceBody,
    responses(
        (status = 201, description = "The signed licence and its claims", body = crate::billing::licence::Licence),
        (status = 422, response = super::openapi::Unprocessable),
        (status = 503, description = "`LICENSE_PRIVATE_KEY` is not set here", body = crate::http::Problem),
    ),
    security(("bearer" = ["licenses:issue"]))
)]
async fn issue(api: &LicensesApi, principal: &crate::auth::Principal, req: &Request) -> Response {
    let Some(key) = &api.key else {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_configured",
            "licences cannot be issued here: LICENSE_PRIVATE_KEY is not set (generate one \
                 with `hookline license keygen`)",
        );
    };
    let now = api.clock.now();
    let request = match parse_request(req.body(), now) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    match key.issue(&request, api.tiers.plan(request.tier), now) {
        Ok(licence) => {
            tracing::info!(
                org_id = %licence.claims.sub,
                tier = %licence.claims.tier,
                seats = licence.claims.seats,
                expires_at = %licence.claims.expires_at(),
                jti = %licence.claims.jti,
                issued_by = %principal.user_id,
                "licence issued"
            );
            json(StatusCode::CREATED, &licence)
        }
        Err(e) => invalid(e.to_string()),
    }
}

/// The body as a licence request, or the answer that says which field is wrong: 400 for a
/// body that is not a JSON object or names an unknown field, 422 for a field's value.
fn parse_request(body: &[u8], now: DateTime<Utc>) -> Result<LicenceRequest, Box<Response>> {
    let mut object: Map<String, Value> =
        json_body(body).map_err(|msg| Box::new(super::bad_request(msg)))?;
    if let Some(unknown) = object.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Box::new(super::bad_request(format!(
            "unknown field `{}`, expected one of {}",
            unknown.chars().take(64).collect::<String>(),
            FIELDS.map(|f| format!("`{f}`")).join(", ")
        ))));
    }
    let present = |v: Option<Value>| v.filter(|v| !v.is_null());
    let org_id = match present(object.remove("org_id")) {
        Some(Value::String(id)) if !id.trim().is_empty() => id,
        _ => {
            return Err(Box::new(invalid(
                "org_id is required: the id of the org the licence is for",
            )))
        }
    };
    let tier = match present(object.remove("tier")) {
        None => DEFAULT_TIER,
        Some(Value::String(t)) => t
            .parse::<Tier>()
            .map_err(|e| Box::new(invalid(format!("tier: {e}"))))?,
        Some(_) => {
            return Err(Box::new(invalid(
                "tier must be one of \"free\", \"team\", \"enterprise\"",
            )))
        }
    };
    let seats = match present(object.remove("seats")) {
        None => DEFAULT_SEATS,
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| (1..=MAX_SEATS).contains(n))
            .ok_or_else(|| {
                Box::new(invalid(format!(
                    "seats must be a whole number from 1 to {MAX_SEATS}"
                )))
            })?,
    };
    let expires_at = match present(object.remove("expires_at")) {
        None => now + DEFAULT_VALIDITY,
        Some(Value::String(t)) => DateTime::parse_from_rfc3339(t.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Box::new(invalid(
                    "expires_at must be an RFC 3339 time such as 2027-01-31T00:00:00Z",
                ))
            })?,
        Some(_) => {
            return Err(Box::new(invalid(
                "expires_at must be an RFC 3339 time such as 2027-01-31T00:00:00Z",
            )))
        }
    };
    if expires_at <= now {
        return Err(Box::new(invalid("expires_at must be in the future")));
    }
    Ok(LicenceRequest {
        org_id,
        tier,
        seats,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{LocalIssuer, OrgId, UserId};
    use crate::clock::ManualClock;
    use bytes::Bytes;
    use std::time::Duration;

    const NOW: i64 = 1_780_000_000;

    fn api(key: Option<LicenceKey>) -> (LocalIssuer, LicensesApi) {
        let clock = Arc::new(ManualClock::at_unix(NOW));
        let issuer = LocalIssuer::ephemeral().with_clock(clock.clone());
        let api = LicensesApi::new(issuer.authenticator(), key, TierTable::default(), clock);
        (issuer, api)
    }

    fn token(issuer: &LocalIssuer, scopes: &[Scope]) -> String {
        issuer.issue(
            &OrgId::new("operator"),
            &UserId::new("staff-1"),
            &scopes.iter().copied().collect(),
            Duration::from_secs(600),
        )
    }

    async fn post(api: &LicensesApi, token: &str, body: &str) -> (StatusCode, Value) {
        let req = http::Request::builder()
            .method(Method::POST)
            .uri("/api/v1/licenses")
            .header("authorization", format!("Bearer {token}"))
            .body(Bytes::from(body.to_owned()))
            .unwrap();
        let res = api.handle(req).await;
        (
            res.status(),
            serde_json::from_slice(res.body()).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn defaults_are_a_team_licence_for_ten_seats_for_a_year() {
        let key = LicenceKey::generate();
        let (issuer, api) = api(Some(key.clone()));
        let (status, body) = post(
            &api,
            &token(&issuer, &[Scope::LicensesIssue]),
            r#"{"org_id":"org-acme"}"#,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["claims"]["tier"], "team");
        assert_eq!(body["claims"]["seats"], 10);
        assert_eq!(body["claims"]["iat"], NOW);
        assert_eq!(body["claims"]["exp"], NOW + 365 * 86_400);
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        let claims = key
            .verifier()
            .verify(body["licence"].as_str().unwrap(), now)
            .unwrap();
        assert_eq!(serde_json::to_value(&claims).unwrap(), body["claims"]);
    }

    #[tokio::test]
    async fn fields_of_the_wrong_type_answer_422_naming_the_field() {
        let (issuer, api) = api(Some(LicenceKey::generate()));
        let t = token(&issuer, &[Scope::LicensesIssue]);
        for (body, field) in [
            (r#"{"org_id":5}"#, "org_id"),
            (r#"{"org_id":"  "}"#, "org_id"),
            (r#"{"org_id":"o","tier":"Enterprise"}"#, "tier"),
            (r#"{"org_id":"o","tier":3}"#, "tier"),
            (r#"{"org_id":"o","seats":0}"#, "seats"),
            (r#"{"org_id":"o","seats":-4}"#, "seats"),
            (r#"{"org_id":"o","seats":"ten"}"#, "seats"),
            (r#"{"org_id":"o","expires_at":"next year"}"#, "expires_at"),
            (r#"{"org_id":"o","expires_at":1900000000}"#, "expires_at"),
        ] {
            let (status, problem) = post(&api, &t, body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            let message = problem["message"].as_str().unwrap();
            assert!(message.starts_with(field), "{body}: {message}");
        }
        for body in ["", "[]", "{", r#"{"org_id":"o","tiers":"team"}"#] {
            let (status, _) = post(&api, &t, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[tokio::test]
    async fn the_sample_event_is_answered_by_the_function_once_its_token_is_real() {
        use crate::runtime::lambda::{handle_api_http, ApiHandler};
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../events/licenses-api-issue.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let parsed: lambda_http::request::LambdaRequest = serde_json::from_str(&text).unwrap();
        let mut req = lambda_http::Request::from(parsed);
        let key = LicenceKey::generate();
        let (issuer, api) = api(Some(key.clone()));
        let handler = ApiHandler::Licenses(Arc::new(api));
        // As shipped, its placeholder token is refused.
        let res = handle_api_http(&handler, req.clone()).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(&issuer, &[Scope::LicensesIssue]))
                .parse()
                .unwrap(),
        );
        let res = handle_api_http(&handler, req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let body: Value = match res.into_body() {
            lambda_http::Body::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("a JSON answer, not {other:?}"),
        };
        assert_eq!(body["claims"]["sub"], "org_selfhosted_globex");
        assert_eq!(body["claims"]["tier"], "enterprise");
        let now = DateTime::from_timestamp(NOW, 0).unwrap();
        assert!(key
            .verifier()
            .verify(body["licence"].as_str().unwrap(), now)
            .is_ok());
    }

    #[tokio::test]
    async fn other_methods_and_paths_are_refused() {
        let (issuer, api) = api(Some(LicenceKey::generate()));
        let t = token(&issuer, &[Scope::LicensesIssue]);
        let req = |method: Method, path: &str| {
            http::Request::builder()
                .method(method)
                .uri(path)
                .header("authorization", format!("Bearer {t}"))
                .body(Bytes::new())
                .unwrap()
        };
        assert_eq!(
            api.handle(req(Method::GET, "/api/v1/licenses"))
                .await
                .status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            api.handle(req(Method::POST, "/api/v1/licenses/abc"))
                .await
                .status(),
            StatusCode::NOT_FOUND
        );
    }
}
