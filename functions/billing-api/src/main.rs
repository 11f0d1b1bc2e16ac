//! Billing: POST /api/v1/billing/checkout and /portal (scope `billing:manage` or `admin`) and
//! GET /api/v1/billing/entitlements/{org_id} (a token of that org); bearer JWT, org-scoped.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Billing).await
}
