//! `/api/v1/incidents…`: the incidents Hookline opened from failed workflow runs and pipelines
//! of an org's connected repositories. Every route needs a bearer token with `repos:read`; a
//! principal only ever sees its own org (another org's incident id is a 404, never a 403).

use super::{method_not_allowed, not_found, query_param};
use crate::auth::{Authenticator, Principal, Scope};
use crate::connections::{Incident, IncidentId, RepoProvider};
use crate::http::{json, problem, Request, Response};
use crate::ports::connections::{ConnectionError, ConnectionStore, MAX_PAGE};
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use utoipa::ToSchema;

/// The org's incidents, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct IncidentList<'a> {
    incidents: Vec<IncidentView<'a>>,
}

/// The statuses an incident can have, for the `status` filter.
pub const STATUSES: &[&str] = &["open", "resolved"];

/// An incident as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Incident)]
pub struct IncidentView<'a> {
    pub id: &'a IncidentId,
    pub repository_full_name: &'a str,
    pub provider: RepoProvider,
    pub workflow: &'a str,
    pub branch: Option<&'a str>,
    pub sha: Option<&'a str>,
    pub url: Option<&'a str>,
    /// `open` or `resolved`.
    pub status: &'a str,
    pub pr_status: Option<&'a str>,
    pub run_id: &'a str,
    pub run_attempt: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Incident> for IncidentView<'a> {
    fn from(i: &'a Incident) -> Self {
        Self {
            id: &i.id,
            repository_full_name: &i.repository_full_name,
            provider: i.provider,
            workflow: &i.workflow,
            branch: i.branch.as_deref(),
            sha: i.sha.as_deref(),
            url: i.url.as_deref(),
            status: &i.status,
            pr_status: i.pr_status.as_deref(),
            run_id: &i.run_id,
            run_attempt: i.run_attempt,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

fn unavailable(e: ConnectionError) -> Response {
    tracing::error!(error = %e, "incidents API could not complete a call");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "try again shortly",
    )
}

pub struct IncidentsApi {
    auth: Authenticator,
    store: Arc<dyn ConnectionStore>,
}

impl IncidentsApi {
    pub fn new(auth: Authenticator, store: Arc<dyn ConnectionStore>) -> Self {
        Self { auth, store }
    }

    pub async fn handle(&self, req: Request) -> Response {
        let principal = match self.auth.authenticate_request(&req).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let path = req.uri().path().trim_end_matches('/').to_string();
        let segments: Vec<&str> = path.split('/').skip(3).collect(); // after "", "api", "v1"
        match segments.as_slice() {
            ["incidents"] => match *req.method() {
                Method::GET => list(self, &principal, &req).await,
                _ => method_not_allowed(),
            },
            ["incidents", id] => match *req.method() {
                Method::GET => get(self, &principal, id).await,
                _ => method_not_allowed(),
            },
            _ => not_found(),
        }
    }
}

/// The org's incidents
///
/// Opened from failed workflow runs and pipelines of its connected repositories, newest
/// first.
#[utoipa::path(
    get,
    path = "/api/v1/incidents",
    tag = "incidents",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "How many (default 50)"),
        ("repository" = Option<String>, Query, description = "Only this repository's (`owner/repo`)"),
        ("status" = Option<String>, Query, description = "`open` or `resolved`"),
    ),
    responses(
        (status = 200, description = "The incidents", body = IncidentList),
        (status = 400, response = super::openapi::BadRequest),
    ),
    security(("bearer" = ["repos:read"]))
)]
async fn list(api: &IncidentsApi, p: &Principal, req: &Request) -> Response {
    if let Err(e) = p.require(Scope::ReposRead) {
        return e.into_response();
    }
    let limit = match query_param(req.uri(), "limit").map(|l| l.parse::<usize>()) {
        None => 50,
        Some(Ok(l)) if (1..=MAX_PAGE).contains(&l) => l,
        Some(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "limit must be a number from 1 to 1000",
            )
        }
    };
    let repository = query_param(req.uri(), "repository").filter(|r| !r.is_empty());
    if repository
        .as_deref()
        .is_some_and(|r| r.len() > 512 || !r.contains('/'))
    {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "repository must be a full name such as owner/repo",
        );
    }
    let status = query_param(req.uri(), "status").filter(|s| !s.is_empty());
    if status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
        return problem(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "status must be open or resolved",
        );
    }
    match api
        .store
        .list_incidents(
            p.org_id.as_str(),
            repository.as_deref(),
            status.as_deref(),
            limit,
        )
        .await
    {
        Ok(incidents) => json(
            StatusCode::OK,
            &IncidentList {
                incidents: incidents.iter().map(IncidentView::from).collect(),
            },
        ),
        Err(e) => unavailable(e),
    }
}

/// One incident
#[utoipa::path(
    get,
    path = "/api/v1/incidents/{id}",
    tag = "incidents",
    params(("id" = IncidentId, Path, description = "The incident (`inc_…`)")),
    responses((status = 200, description = "The incident", body = IncidentView)),
    security(("bearer" = ["repos:read"]))
)]
async fn get(api: &IncidentsApi, p: &Principal, raw_id: &str) -> Response {
    if let Err(e) = p.require(Scope::ReposRead) {
        return e.into_response();
    }
    // A malformed id is as unknown as another org's.
    let Some(id) = IncidentId::parse(raw_id) else {
        return not_found();
    };
    match api.store.get_incident(p.org_id.as_str(), &id).await {
        Ok(Some(i)) => json(StatusCode::OK, &IncidentView::from(&i)),
        Ok(None) => not_found(),
        Err(e) => unavailable(e),
    }
}
