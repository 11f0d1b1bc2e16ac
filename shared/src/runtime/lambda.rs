//! Lambda glue: builds the AWS adapters once per cold start and hands requests (API Gateway
//! HTTP API) or SQS batches to the same handlers the local server uses.

use super::App;
use crate::clock::SystemClock;
use crate::config::{required, Settings};
use crate::http::Request;
use crate::model::Source;
use crate::pipeline::Pipeline;
use crate::ports::queue::aws::SqsQueue;
use crate::ports::secrets::aws::SecretsManagerSource;
use crate::ports::secrets::SecretSource;
use crate::ports::store::aws::DynamoStore;
use crate::worker::{Worker, WorkerMessage};
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use bytes::Bytes;
use lambda_http::Body;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::sync::Arc;

/// The AWS adapters, from `HOOKLINE_TABLE`, `HOOKLINE_QUEUE_URL`, `HOOKLINE_DLQ_URL` and
/// `HOOKLINE_SECRETS_ID` (the SDK itself honours `AWS_ENDPOINT_URL`).
pub async fn aws_app() -> Result<App, Error> {
    let settings = Settings::from_env()?;
    let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let store = DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        required("HOOKLINE_TABLE")?,
    );
    let queue = SqsQueue::new(
        aws_sdk_sqs::Client::new(&sdk),
        required("HOOKLINE_QUEUE_URL")?,
        required("HOOKLINE_DLQ_URL")?,
    );
    let secrets = SecretsManagerSource::new(
        aws_sdk_secretsmanager::Client::new(&sdk),
        required("HOOKLINE_SECRETS_ID")?,
    )
    .load()
    .await?;
    Ok(App::assemble(
        Arc::new(store),
        Arc::new(queue),
        secrets,
        Arc::new(SystemClock),
        settings,
    ))
}

/// Run an inbound webhook function for `source`.
pub async fn run_inbound(source: Source) -> Result<(), Error> {
    super::init_tracing();
    let app = aws_app().await?;
    let pipeline = app.pipeline.clone();
    lambda_http::run(lambda_http::service_fn(move |req| {
        let pipeline = pipeline.clone();
        async move { handle_http(&pipeline, source, req).await }
    }))
    .await
}

/// One API Gateway request through the pipeline. `lambda_http` has already decoded a
/// base64 body, so the pipeline sees the exact bytes the provider signed.
pub async fn handle_http(
    pipeline: &Pipeline,
    source: Source,
    req: lambda_http::Request,
) -> Result<lambda_http::Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(raw) => Bytes::from(raw),
    };
    let res = pipeline
        .handle(source, Request::from_parts(parts, bytes))
        .await;
    let (parts, body) = res.into_parts();
    let body = match String::from_utf8(body.to_vec()) {
        Ok(text) => Body::Text(text),
        Err(e) => Body::Binary(e.into_bytes()),
    };
    Ok(lambda_http::Response::from_parts(parts, body))
}

/// Run the event worker on SQS batches, reporting partial batch failures.
pub async fn run_worker() -> Result<(), Error> {
    super::init_tracing();
    let app = aws_app().await?;
    let worker = app.worker.clone();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        async move { Ok::<_, Error>(handle_sqs(&worker, event.payload).await) }
    }))
    .await
}

/// One SQS batch through the worker; the failed message ids go back as `batchItemFailures`.
pub async fn handle_sqs(worker: &Worker, event: SqsEvent) -> SqsBatchResponse {
    let messages: Vec<WorkerMessage> = event
        .records
        .into_iter()
        .map(|r| WorkerMessage {
            message_id: r.message_id.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
    let failed = worker.process_batch(&messages).await;
    SqsBatchResponse {
        batch_item_failures: failed
            .into_iter()
            .map(|item_identifier| BatchItemFailure { item_identifier })
            .collect(),
    }
}
