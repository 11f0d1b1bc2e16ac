//! Deliverer: consumes the outbound deliveries queue (SQS), makes one signed attempt per
//! message and schedules the next; reports partial batch failures.
#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    hookline::runtime::lambda::run_deliverer().await
}
