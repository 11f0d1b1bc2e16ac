//! Dispatcher: consumes "org has new events" signals (SQS) and a schedule's sweep, and creates
//! one delivery per (endpoint, event) for the deliverer.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_dispatcher().await
}
