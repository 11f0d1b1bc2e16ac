//! Event worker: consumes the deliveries queue (SQS), processes each delivery once and reports
//! partial batch failures; after the redrive limit a message lands in the dead-letter queue.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_worker().await
}
