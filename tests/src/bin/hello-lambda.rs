//! The floor `infra/lambda-profile.py` measures Hookline's functions against: a bare
//! `lambda_runtime` function that answers `{}`, built with the same profile.
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(|_: LambdaEvent<serde_json::Value>| async {
        Ok::<_, Error>(serde_json::json!({}))
    }))
    .await
}
