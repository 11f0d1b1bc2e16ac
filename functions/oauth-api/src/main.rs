//! Provider OAuth: GET /api/v1/oauth/{github|gitlab}/authorize (bearer JWT) and
//! GET /api/v1/oauth/{github|gitlab}/callback (signed state); stores the token sealed by KMS.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Oauth).await
}
