//! Repository connections: /api/v1/repositories/… (connect, list, read, change, rotate, retry,
//! disconnect) and PUT /api/v1/provider-tokens/{provider}; bearer JWT, org-scoped.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Repositories).await
}
