//! Offline licences: POST /api/v1/licenses signs one with LICENSE_PRIVATE_KEY; bearer JWT
//! with the operator's `licenses:issue` scope (never implied by `admin`).
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Licenses).await
}
