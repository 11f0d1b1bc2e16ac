//! `/api/v1/org`: the caller's org profile — its name and the owner Hookline tells when
//! something needs a person. Both routes need `admin`; the org is always the token's own, so
//! no request can name (or read) another.

use super::{json_body, method_not_allowed, not_found};
use crate::auth::{Authenticator, Principal, Scope};
use crate::clock::Clock;
use crate::http::{json, problem, Request, Response};
use crate::outbound::model::OrgProfile;
use crate::ports::mail::address_problem;
use crate::ports::orgs::{OrgError, OrgStore};
use http::{Method, StatusCode};
use serde::{Deserialize, Deserializer, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// The longest org name accepted.
pub const MAX_NAME_CHARS: usize = 200;

/// The profile as the API shows it (an org nobody has set up yet shows nulls).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Org)]
struct OrgView<'a> {
    org_id: &'a str,
    name: Option<&'a str>,
    owner_email: Option<&'a str>,
}

/// `PATCH` fields: absent leaves a field as it is, `null` clears it.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrgPatch {
    /// 1 to 200 characters on one line.
    #[serde(default, deserialize_with = "present")]
    name: Option<Option<String>>,
    /// Who Hookline mails when something needs a person.
    #[serde(default, deserialize_with = "present")]
    owner_email: Option<Option<String>>,
}

/// A field that is present, null or not, is `Some` (serde alone folds null into absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The body as a patch. It must be an object: serde would read a struct from `[]` too.
fn parse_patch(body: &[u8]) -> Result<OrgPatch, String> {
    let object: serde_json::Map<String, serde_json::Value> = json_body(body)?;
    serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| e.to_string())
}

fn invalid(message: impl Into<String>) -> Response {
    problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
}

fn unavailable(e: OrgError) -> Response {
    tracing::error!(error = %e, "org API could not complete a call");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "try again shortly",
    )
}

pub struct OrgApi {
    auth: Authenticator,
    orgs: Arc<dyn OrgStore>,
    clock: Arc<dyn Clock>,
}

impl OrgApi {
    pub fn new(auth: Authenticator, orgs: Arc<dyn OrgStore>, clock: Arc<dyn Clock>) -> Self {
        Self { auth, orgs, clock }
    }

    pub async fn handle(&self, req: Request) -> Response {
        let principal = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        if req.uri().path().trim_end_matches('/') != "/api/v1/org" {
            return not_found();
        }
        if let Err(e) = principal.require(Scope::Admin) {
            return e.into_response();
        }
        match *req.method() {
            Method::GET => get(self, &principal).await,
            Method::PATCH => patch(self, &principal, &req).await,
            _ => method_not_allowed(),
        }
    }
}

/// The org's profile
#[utoipa::path(
    get,
    path = "/api/v1/org",
    tag = "org",
    responses((status = 200, description = "The profile", body = OrgView)),
    security(("bearer" = ["admin"]))
)]
async fn get(api: &OrgApi, p: &Principal) -> Response {
    match api.orgs.get_org(p.org_id.as_str()).await {
        Ok(profile) => view(p, profile.as_ref()),
        Err(e) => unavailable(e),
    }
}

/// Change the org's profile
///
/// A field left out stays as it is; `null` clears it.
#[utoipa::path(
    patch,
    path = "/api/v1/org",
    tag = "org",
    request_body = OrgPatch,
    responses(
        (status = 200, description = "The changed profile", body = OrgView),
        (status = 422, response = super::openapi::Unprocessable),
    ),
    security(("bearer" = ["admin"]))
)]
async fn patch(api: &OrgApi, p: &Principal, req: &Request) -> Response {
    let patch = match parse_patch(req.body()) {
        Ok(patch) => patch,
        Err(msg) => return super::bad_request(msg),
    };
    if let Some(Some(name)) = &patch.name {
        let chars = name.trim().chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            return invalid(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters on one line (or null to clear it)"
            ));
        }
    }
    if let Some(Some(email)) = &patch.owner_email {
        if let Some(problem) = address_problem(email) {
            return invalid(format!("owner_email {problem} (or null to clear it)"));
        }
    }
    let now = api.clock.now();
    let stored = match api.orgs.get_org(p.org_id.as_str()).await {
        Ok(stored) => stored,
        Err(e) => return unavailable(e),
    };
    let mut profile = stored.unwrap_or_else(|| OrgProfile {
        org_id: p.org_id.as_str().to_owned(),
        name: None,
        owner_email: None,
        created_at: now,
        updated_at: now,
    });
    if let Some(name) = patch.name {
        profile.name = name.map(|n| n.trim().to_owned());
    }
    if let Some(email) = patch.owner_email {
        profile.owner_email = email;
    }
    profile.updated_at = now;
    match api.orgs.put_org(&profile).await {
        Ok(()) => {
            tracing::info!(org_id = %p.org_id, user_id = %p.user_id, "org profile updated");
            view(p, Some(&profile))
        }
        Err(e) => unavailable(e),
    }
}

fn view(p: &Principal, profile: Option<&OrgProfile>) -> Response {
    json(
        StatusCode::OK,
        &OrgView {
            org_id: p.org_id.as_str(),
            name: profile.and_then(|p| p.name.as_deref()),
            owner_email: profile.and_then(|p| p.owner_email.as_deref()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{LocalIssuer, OrgId, UserId};
    use crate::clock::SystemClock;
    use crate::ports::orgs::embedded::EmbeddedOrgStore;
    use crate::ports::sqlite::{Database, Durability};
    use bytes::Bytes;
    use std::collections::BTreeSet;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        issuer: LocalIssuer,
        api: OrgApi,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), Durability::Normal).unwrap();
        let issuer = LocalIssuer::ephemeral();
        let api = OrgApi::new(
            issuer.authenticator(),
            Arc::new(EmbeddedOrgStore::new(db)),
            Arc::new(SystemClock),
        );
        Fixture {
            _dir: dir,
            issuer,
            api,
        }
    }

    impl Fixture {
        fn token(&self, org: &str, scopes: &[Scope]) -> String {
            self.issuer.issue(
                &OrgId::new(org),
                &UserId::new("user-1"),
                &scopes.iter().copied().collect::<BTreeSet<_>>(),
                Duration::from_secs(600),
            )
        }

        async fn call(
            &self,
            method: Method,
            token: Option<&str>,
            body: &str,
        ) -> (StatusCode, serde_json::Value) {
            let mut req = http::Request::builder()
                .method(method)
                .uri("https://hooks.example.com/api/v1/org");
            if let Some(token) = token {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            let res = self
                .api
                .handle(req.body(Bytes::from(body.to_owned())).unwrap())
                .await;
            let status = res.status();
            let value = serde_json::from_slice(res.body()).unwrap_or(serde_json::Value::Null);
            (status, value)
        }

        async fn get(&self, token: &str) -> (StatusCode, serde_json::Value) {
            self.call(Method::GET, Some(token), "").await
        }

        async fn patch(&self, token: &str, body: &str) -> (StatusCode, serde_json::Value) {
            self.call(Method::PATCH, Some(token), body).await
        }
    }

    #[tokio::test]
    async fn the_org_routes_need_a_token() {
        let f = fixture();
        for method in [Method::GET, Method::PATCH] {
            let (status, body) = f.call(method, None, "{}").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(body["error"], "unauthorized");
        }
        let (status, _) = f.call(Method::GET, Some("not-a-jwt"), "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_token_without_admin_is_forbidden() {
        let f = fixture();
        let token = f.token(
            "org-a",
            &[Scope::ReposRead, Scope::ReposWrite, Scope::WebhooksManage],
        );
        let (status, body) = f.get(&token).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "forbidden");
        let (status, _) = f
            .patch(&token, r#"{"owner_email":"owner@example.com"}"#)
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let admin = f.token("org-a", &[Scope::Admin]);
        assert_eq!(
            f.get(&admin).await.1["owner_email"],
            serde_json::Value::Null,
            "nothing was written"
        );
    }

    #[tokio::test]
    async fn a_new_org_has_an_empty_profile() {
        let f = fixture();
        let (status, body) = f.get(&f.token("org-a", &[Scope::Admin])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({"org_id": "org-a", "name": null, "owner_email": null})
        );
    }

    #[tokio::test]
    async fn the_profile_round_trips_field_by_field_and_null_clears() {
        let f = fixture();
        let admin = f.token("org-a", &[Scope::Admin]);
        let (status, body) = f
            .patch(
                &admin,
                r#"{"name":"Acme Zürich","owner_email":"owner@acme.example"}"#,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            serde_json::json!({"org_id":"org-a","name":"Acme Zürich","owner_email":"owner@acme.example"})
        );
        assert_eq!(f.get(&admin).await.1, body);

        // Absent leaves a field alone; null clears it.
        let (_, body) = f
            .patch(&admin, r#"{"owner_email":"ops@acme.example"}"#)
            .await;
        assert_eq!(body["name"], "Acme Zürich");
        assert_eq!(body["owner_email"], "ops@acme.example");
        let (_, body) = f.patch(&admin, r#"{"name":null}"#).await;
        assert_eq!(body["name"], serde_json::Value::Null);
        assert_eq!(body["owner_email"], "ops@acme.example");
        let (status, body) = f.patch(&admin, "{}").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(f.get(&admin).await.1, body);
    }

    #[tokio::test]
    async fn each_org_sees_only_its_own_profile() {
        let f = fixture();
        let a = f.token("org-a", &[Scope::Admin]);
        let b = f.token("org-b", &[Scope::Admin]);
        f.patch(&a, r#"{"name":"A","owner_email":"a@example.com"}"#)
            .await;
        assert_eq!(
            f.get(&b).await.1,
            serde_json::json!({"org_id": "org-b", "name": null, "owner_email": null})
        );
        f.patch(&b, r#"{"owner_email":"b@example.com"}"#).await;
        assert_eq!(f.get(&a).await.1["owner_email"], "a@example.com");
        // A body cannot name another org.
        let (status, _) = f.patch(&b, r#"{"org_id":"org-a"}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn a_malformed_owner_email_is_refused_with_what_is_wrong() {
        let f = fixture();
        let admin = f.token("org-a", &[Scope::Admin]);
        let long = format!(r#"{{"owner_email":"{}@example.com"}}"#, "a".repeat(250));
        for body in [
            r#"{"owner_email":"owner"}"#,
            r#"{"owner_email":"owner@example"}"#,
            r#"{"owner_email":"a@b@example.com"}"#,
            r#"{"owner_email":"own er@example.com"}"#,
            r#"{"owner_email":""}"#,
            long.as_str(),
        ] {
            let (status, problem) = f.patch(&admin, body).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(problem["error"], "invalid_request");
            let message = problem["message"].as_str().unwrap();
            assert!(message.starts_with("owner_email "), "{message}");
        }
        let (status, problem) = f.patch(&admin, r#"{"name":"   "}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(problem["message"].as_str().unwrap().starts_with("name "));
        assert_eq!(
            f.get(&admin).await.1["owner_email"],
            serde_json::Value::Null
        );
    }

    #[tokio::test]
    async fn malformed_json_and_unknown_fields_are_bad_requests() {
        let f = fixture();
        let admin = f.token("org-a", &[Scope::Admin]);
        for body in [
            "",
            "{",
            "[]",
            r#"{"owner":"x@example.com"}"#,
            r#"{"name":5}"#,
        ] {
            let (status, problem) = f.patch(&admin, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(problem["error"], "invalid_request");
        }
    }

    #[tokio::test]
    async fn a_store_that_cannot_write_answers_503_without_details() {
        let dir = tempfile::tempdir().unwrap();
        drop(Database::open(dir.path(), Durability::Normal).unwrap());
        let issuer = LocalIssuer::ephemeral();
        let api = OrgApi::new(
            issuer.authenticator(),
            Arc::new(EmbeddedOrgStore::new(
                Database::open_read_only(dir.path()).unwrap(),
            )),
            Arc::new(SystemClock),
        );
        let f = Fixture {
            _dir: dir,
            issuer,
            api,
        };
        let admin = f.token("org-a", &[Scope::Admin]);
        assert_eq!(f.get(&admin).await.0, StatusCode::OK, "reads still work");
        let (status, problem) = f
            .patch(&admin, r#"{"owner_email":"owner@example.com"}"#)
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            problem,
            serde_json::json!({"error": "unavailable", "message": "try again shortly"})
        );
    }

    #[tokio::test]
    async fn other_methods_and_paths_are_refused() {
        let f = fixture();
        let admin = f.token("org-a", &[Scope::Admin]);
        let (status, _) = f.call(Method::DELETE, Some(&admin), "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let req = http::Request::builder()
            .uri("/api/v1/org/members")
            .header("authorization", format!("Bearer {admin}"))
            .body(Bytes::new())
            .unwrap();
        assert_eq!(f.api.handle(req).await.status(), StatusCode::NOT_FOUND);
    }
}
