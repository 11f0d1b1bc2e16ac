//! Outbound endpoints: /api/v1/endpoints…, /api/v1/deliveries…, /api/v1/event-types and
//! /api/v1/org; bearer JWT, org-scoped.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Endpoints).await
}
