//! GitLab webhooks: POST /api/v1/webhooks/gitlab, verified, deduped and queued for the worker.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_inbound(hookline::model::Source::Gitlab).await
}
