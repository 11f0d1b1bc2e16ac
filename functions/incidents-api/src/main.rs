//! Incidents: GET /api/v1/incidents (filters `repository`, `status`) and
//! GET /api/v1/incidents/{id}; bearer JWT with repos:read, org-scoped.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Incidents).await
}
