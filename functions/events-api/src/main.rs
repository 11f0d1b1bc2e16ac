//! Publishing: POST /api/v1/events (and GET /api/v1/events/{id}) into the caller's org stream.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_api(hookline::runtime::lambda::Api::Events).await
}
