//! Lambda glue: builds the AWS adapters once per cold start and hands requests (API Gateway
//! HTTP API) or SQS batches to the same handlers the local server uses.

use super::App;
use crate::clock::SystemClock;
use crate::config::{ConfigError, Settings};
use crate::http::Request;
use crate::model::Source;
use crate::pipeline::Pipeline;
use crate::ports::queue::aws::SqsQueue;
use crate::ports::secrets::aws::SecretsManagerSource;
use crate::ports::store::aws::DynamoStore;
use crate::providers::ProviderSecrets;
use crate::worker::{Worker, WorkerMessage};
use aws_config::SdkConfig;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use bytes::Bytes;
use lambda_http::Body;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Where a function reads its configuration variables: the process environment on Lambda
/// ([`crate::config::var`]); a test passes exactly what template.yaml gives the function, so
/// it never has to set process-wide variables.
pub type Vars<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

/// One variable from `env`; unset or blank is `None`, as in [`crate::config::var`].
fn var(env: Vars, name: &str) -> Option<String> {
    crate::config::present(env(name))
}

/// A variable the function cannot start without, with an error that names it.
fn required(env: Vars, name: &'static str) -> Result<String, ConfigError> {
    var(env, name).ok_or(ConfigError {
        name,
        expected: "set",
        value: String::new(),
    })
}

/// JSON log lines, and the metrics recorder whose EMF lines join them: what every function
/// sets up first in its cold start (no network call).
fn start() {
    super::init_tracing();
    install_metrics(&crate::config::var);
}

/// The function's CloudWatch Embedded Metric Format recorder, once per process.
static EMF: OnceLock<Option<&'static metrics_cloudwatch_embedded::Collector>> = OnceLock::new();

/// Install the EMF recorder: every metric recorded during an invocation is written after it
/// (`flush_metrics`) in namespace `HOOKLINE_METRICS_NAMESPACE` (default `Hookline`), with
/// its labels as the only dimensions. `false` if another recorder was installed first.
pub fn install_metrics(env: Vars) -> bool {
    EMF.get_or_init(|| {
        let namespace =
            var(env, "HOOKLINE_METRICS_NAMESPACE").unwrap_or_else(|| "Hookline".to_owned());
        match metrics_cloudwatch_embedded::Builder::new()
            .cloudwatch_namespace(namespace)
            .init()
        {
            Ok(collector) => {
                crate::telemetry::describe();
                Some(collector)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics are not emitted");
                None
            }
        }
    })
    .is_some()
}

/// Write the metrics recorded since the last flush to `out` as EMF lines, one per label set
/// (on Lambda: stdout, where CloudWatch Logs turns them into metrics).
pub fn flush_metrics(out: impl std::io::Write) {
    if let Some(Some(collector)) = EMF.get() {
        if let Err(e) = collector.flush(out) {
            tracing::warn!(error = %e, "could not write this invocation's metrics");
        }
    }
}

/// One invocation, then the metrics it recorded, written to stdout while holding its lock so
/// no log line lands inside an EMF line.
async fn metered<T>(invocation: impl std::future::Future<Output = T>) -> T {
    let out = invocation.await;
    flush_metrics(std::io::stdout().lock());
    out
}

/// The SDK config a function builds its clients from, once per cold start (the SDK honours
/// `AWS_ENDPOINT_URL`).
async fn lambda_sdk() -> SdkConfig {
    crate::ports::secrets::aws::sdk_config_for(None).await
}

/// One cold start's shared inputs: its variables, one client per AWS service over one SDK
/// config (so one HTTP client and one connection pool), and the provider secret's values,
/// read with one `GetSecretValue` however many parts of the function need them.
pub struct ColdStart<'a> {
    sdk: &'a SdkConfig,
    env: Vars<'a>,
    dynamo: OnceLock<aws_sdk_dynamodb::Client>,
    sqs: OnceLock<aws_sdk_sqs::Client>,
    kms: OnceLock<aws_sdk_kms::Client>,
    ses: OnceLock<aws_sdk_sesv2::Client>,
    secrets: tokio::sync::OnceCell<HashMap<String, String>>,
}

impl<'a> ColdStart<'a> {
    pub fn new(sdk: &'a SdkConfig, env: Vars<'a>) -> Self {
        Self {
            sdk,
            env,
            dynamo: OnceLock::new(),
            sqs: OnceLock::new(),
            kms: OnceLock::new(),
            ses: OnceLock::new(),
            secrets: tokio::sync::OnceCell::new(),
        }
    }

    fn var(&self, name: &str) -> Option<String> {
        var(self.env, name)
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        required(self.env, name)
    }

    fn dynamo(&self) -> aws_sdk_dynamodb::Client {
        self.dynamo
            .get_or_init(|| aws_sdk_dynamodb::Client::new(self.sdk))
            .clone()
    }

    fn sqs(&self) -> aws_sdk_sqs::Client {
        self.sqs
            .get_or_init(|| aws_sdk_sqs::Client::new(self.sdk))
            .clone()
    }

    fn kms(&self) -> aws_sdk_kms::Client {
        self.kms
            .get_or_init(|| aws_sdk_kms::Client::new(self.sdk))
            .clone()
    }

    fn ses(&self) -> aws_sdk_sesv2::Client {
        self.ses
            .get_or_init(|| aws_sdk_sesv2::Client::new(self.sdk))
            .clone()
    }

    /// The table the function's stores share (`HOOKLINE_TABLE`).
    fn table(&self) -> Result<String, ConfigError> {
        self.required("HOOKLINE_TABLE")
    }

    /// The deliveries queue and its dead-letter queue.
    fn queue(&self) -> Result<SqsQueue, ConfigError> {
        Ok(SqsQueue::new(
            self.sqs(),
            self.required("HOOKLINE_QUEUE_URL")?,
            self.required("HOOKLINE_DLQ_URL")?,
        ))
    }

    /// The KMS key that opens stored secrets, its data keys cached while the Lambda is warm.
    fn keys(&self) -> Result<Arc<dyn crate::ports::keys::KeyService>, ConfigError> {
        use crate::ports::keys::{aws::KmsKeys, CachedKeys};
        Ok(Arc::new(CachedKeys::new(KmsKeys::new(
            self.kms(),
            self.required("HOOKLINE_KMS_KEY_ID")?,
        ))))
    }

    /// The provider secret's values (`HOOKLINE_SECRETS_ID`), fetched on first use. Never
    /// logged.
    async fn secrets(&self) -> Result<&HashMap<String, String>, Error> {
        // The client too is made once, by the call that reads the secret.
        self.secrets
            .get_or_try_init(|| async {
                let id = self.required("HOOKLINE_SECRETS_ID")?;
                let client = aws_sdk_secretsmanager::Client::new(self.sdk);
                Ok::<_, Error>(SecretsManagerSource::new(client, id).values().await?)
            })
            .await
    }

    /// A variable from the environment, else from the provider secret's values: where a
    /// function looks up what may live in either (the environment wins).
    async fn lookup(&self) -> Result<impl Fn(&str) -> Option<String> + '_, Error> {
        let secrets = self.secrets().await?;
        Ok(move |name: &str| {
            self.var(name)
                .or_else(|| crate::config::present(secrets.get(name)).cloned())
        })
    }
}

/// The AWS adapters, from `HOOKLINE_TABLE`, `HOOKLINE_QUEUE_URL`, `HOOKLINE_DLQ_URL` and
/// `HOOKLINE_SECRETS_ID` in the environment.
pub async fn aws_app() -> Result<App, Error> {
    aws_app_with(&lambda_sdk().await, &crate::config::var).await
}

/// [`aws_app`] over `sdk`, with its variables read from `env`.
pub async fn aws_app_with(sdk: &SdkConfig, env: Vars<'_>) -> Result<App, Error> {
    app(&ColdStart::new(sdk, env)).await
}

async fn app(cold: &ColdStart<'_>) -> Result<App, Error> {
    let settings = Settings::from_lookup(cold.env)?;
    let store = DynamoStore::new(cold.dynamo(), cold.table()?);
    let queue = cold.queue()?;
    let secrets = cold.secrets().await?;
    Ok(App::assemble(
        Arc::new(store),
        Arc::new(queue),
        ProviderSecrets::from_lookup(|name| secrets.get(name).cloned()),
        Arc::new(SystemClock),
        settings,
    ))
}

/// The connection store, when this deployment manages repository connections
/// (`HOOKLINE_KMS_KEY_ID` is set by the template).
fn connections(
    cold: &ColdStart,
) -> Result<Option<Arc<dyn crate::ports::connections::ConnectionStore>>, Error> {
    if cold.var("HOOKLINE_KMS_KEY_ID").is_none() {
        return Ok(None);
    }
    Ok(Some(Arc::new(
        crate::ports::connections::aws::DynamoConnectionStore::new(cold.dynamo(), cold.table()?),
    )))
}

/// GitHub and GitLab deliveries of connected repositories verify with the repository's own
/// secret, opened with KMS (and cached while the Lambda is warm).
fn with_connection_secrets(
    app: &App,
    source: Source,
    cold: &ColdStart,
) -> Result<Arc<Pipeline>, Error> {
    use crate::connections::service::{
        Repositories, Settings as RepoSettings, StoredProviderTokens,
    };
    if !matches!(source, Source::Github | Source::Gitlab) {
        return Ok(app.pipeline.clone());
    }
    let Some(store) = connections(cold)? else {
        return Ok(app.pipeline.clone());
    };
    let keys = cold.keys()?;
    let tokens = Arc::new(StoredProviderTokens::new(store.clone(), keys.clone()));
    // Only `candidates` is used here: the hook clients are never called by a webhook.
    let repos = Repositories::new(
        store,
        keys,
        tokens,
        Arc::new(crate::hooks::github::GitHubHooks::new(
            "https://api.github.com",
        )),
        Arc::new(crate::hooks::gitlab::GitLabHooks::new("https://gitlab.com")),
        Arc::new(SystemClock),
        RepoSettings {
            webhook_base_url: cold.var("WEBHOOK_BASE_URL").unwrap_or_default(),
            rotation_overlap: std::time::Duration::from_secs(3600),
        },
    );
    Ok(Arc::new(app.pipeline.with_connections(Arc::new(repos))))
}

/// The pipeline an inbound webhook function for `source` serves, over `sdk`, with its
/// variables read from `env`.
pub async fn aws_inbound_with(
    source: Source,
    sdk: &SdkConfig,
    env: Vars<'_>,
) -> Result<Arc<Pipeline>, Error> {
    let cold = ColdStart::new(sdk, env);
    let app = app(&cold).await?;
    with_connection_secrets(&app, source, &cold)
}

/// Run an inbound webhook function for `source`.
pub async fn run_inbound(source: Source) -> Result<(), Error> {
    start();
    let pipeline = Warm::start(move || async move {
        aws_inbound_with(source, &lambda_sdk().await, &crate::config::var).await
    })
    .await?;
    lambda_http::run(lambda_http::service_fn(move |req| {
        let pipeline = pipeline.clone();
        metered(async move { handle_http(&*pipeline.get().await?, source, req).await })
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

/// What a function serves, built once per process. On an on-demand cold start the build runs
/// in the background from process start, so the runtime asks for its first event while the
/// cold start's AWS round trips (the provider secret) are in flight, and the first invocation
/// waits only for what is left. With provisioned concurrency (or SnapStart) the init is off
/// the request path, so it is finished before the first event is asked for. A failed build
/// fails the invocation that waited for it, with its reason, and the next invocation builds
/// again: a throttled `GetSecretValue` must not leave a warm process broken for good.
pub struct Warm<T> {
    ready: tokio::sync::OnceCell<Arc<T>>,
    first: std::sync::Mutex<Option<tokio::task::JoinHandle<Result<T, Error>>>>,
    build: Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<T, Error>> + Send + Sync>,
}

impl<T: Send + Sync + 'static> Warm<T> {
    /// Start building with `build`; an init Lambda does not bill by the request (provisioned
    /// concurrency, SnapStart: `AWS_LAMBDA_INITIALIZATION_TYPE`) finishes before it returns,
    /// and fails the cold start if the build fails.
    pub async fn start<F, Fut>(build: F) -> Result<Arc<Self>, Error>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        Self::start_as(crate::config::var("AWS_LAMBDA_INITIALIZATION_TYPE"), build).await
    }

    /// [`Warm::start`] for an init of `kind` (`on-demand` when unset).
    async fn start_as<F, Fut>(kind: Option<String>, build: F) -> Result<Arc<Self>, Error>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<T, Error>> + Send + 'static,
    {
        let build: Box<
            dyn Fn() -> futures::future::BoxFuture<'static, Result<T, Error>> + Send + Sync,
        > = Box::new(move || Box::pin(build()));
        let warm = Arc::new(Self {
            first: std::sync::Mutex::new(Some(tokio::spawn(build()))),
            ready: tokio::sync::OnceCell::new(),
            build,
        });
        if kind.is_some_and(|kind| kind != "on-demand") {
            warm.get().await?;
        }
        Ok(warm)
    }

    /// What the function serves, once built.
    pub async fn get(&self) -> Result<Arc<T>, Error> {
        self.ready
            .get_or_try_init(|| async {
                let first = self.first.lock().expect("never poisoned").take();
                let built = match first {
                    Some(task) => task
                        .await
                        .map_err(|e| Error::from(format!("the cold start's build failed: {e}")))
                        .and_then(|built| built),
                    None => (self.build)().await,
                };
                built.map(Arc::new).inspect_err(
                    |e| tracing::error!(error = %e, "cannot serve: the function's build failed"),
                )
            })
            .await
            .cloned()
    }
}

/// The event worker, over `sdk`, with its variables read from `env`.
pub async fn aws_worker_with(sdk: &SdkConfig, env: Vars<'_>) -> Result<Arc<Worker>, Error> {
    let cold = ColdStart::new(sdk, env);
    let app = app(&cold).await?;
    // Connected repositories get workflow runs, incidents and pull requests too, and their
    // orgs' streams get incidents and relayed deliveries.
    Ok(match connections(&cold)? {
        Some(connections) => {
            // Stripe deliveries update the orgs' billing; connected repositories' deliveries
            // count in their orgs' usage. One billing (and one plan cache) for both, and for
            // the events the worker publishes.
            let lookup = cold.lookup().await?;
            let billing = billing(&cold, &lookup)?;
            let events = event_sink(&cold, &lookup, billing.plans().clone())?;
            let dispatcher = crate::worker::Dispatcher::with_repositories(
                app.store.clone(),
                connections,
                events,
                Some(billing.plans().clone()),
            );
            Arc::new(
                app.worker
                    .with_dispatcher(dispatcher.with_billing(app.store.clone(), billing)),
            )
        }
        None => app.worker.clone(),
    })
}

/// Where Hookline's own events go when this deployment runs outbound webhooks
/// (`HOOKLINE_DISPATCH_QUEUE_URL` is set by the template), their quota from `plans`.
fn event_sink(
    cold: &ColdStart,
    lookup: &dyn Fn(&str) -> Option<String>,
    plans: Arc<dyn crate::billing::plan::PlanGate>,
) -> Result<Option<Arc<dyn crate::outbound::sink::EventSink>>, Error> {
    if cold.var("HOOKLINE_DISPATCH_QUEUE_URL").is_none() {
        return Ok(None);
    }
    let outbound = outbound(cold, cold.keys()?, lookup, Some(plans))?;
    Ok(Some(outbound.publisher.clone()))
}

/// Run the event worker on SQS batches, reporting partial batch failures.
pub async fn run_worker() -> Result<(), Error> {
    start();
    let worker =
        Warm::start(|| async { aws_worker_with(&lambda_sdk().await, &crate::config::var).await })
            .await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let worker = worker.clone();
        metered(async move {
            let worker = worker.get().await?;
            Ok::<_, Error>(handle_sqs(&worker, event.payload).await)
        })
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

// ---------------------------------------------------------------------------------------------
// The authenticated API functions (repositories-api, oauth-api, …).

/// The route groups served by their own API function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/api/v1/repositories/…` and `/api/v1/provider-tokens/…`.
    Repositories,
    /// `/api/v1/oauth/…`.
    Oauth,
    /// `/api/v1/incidents` and `/api/v1/incidents/…`.
    Incidents,
    /// `/api/v1/endpoints…`, `/api/v1/deliveries…`, `/api/v1/event-types`, `/api/v1/org` and
    /// `/api/v1/openapi.json`.
    Endpoints,
    /// `/api/v1/events…`.
    Events,
    /// `POST /api/v1/licenses` (the operator's; scope `licenses:issue`).
    Licenses,
    /// `/api/v1/billing/…`.
    Billing,
}

/// One API function's handler, built once per cold start.
#[derive(Clone)]
pub enum ApiHandler {
    Repositories(Arc<crate::api::repositories::RepositoriesApi>),
    Oauth(Arc<crate::api::oauth::OAuthApi>),
    Incidents(Arc<crate::api::incidents::IncidentsApi>),
    /// The endpoints API, which also serves the org profile.
    Endpoints(
        Arc<crate::api::endpoints::EndpointsApi>,
        Arc<crate::api::org::OrgApi>,
    ),
    Events(Arc<crate::api::events::EventsApi>),
    Licenses(Arc<crate::api::licenses::LicensesApi>),
    Billing(Arc<crate::api::billing::BillingApi>),
    /// A handler behind the per-org API rate limit (`HOOKLINE_API_RATE_LIMIT`).
    RateLimited(Arc<crate::api::ratelimit::ApiRateLimit>, Arc<ApiHandler>),
    /// A configuration this function cannot serve without: every request answers a 503 that
    /// names the variable to set (visible to the caller, unlike a failed cold start).
    Misconfigured(String),
}

impl ApiHandler {
    pub async fn handle(&self, req: Request) -> crate::http::Response {
        match self {
            ApiHandler::Repositories(api) => api.handle(req).await,
            ApiHandler::Oauth(api) => api.handle(req).await,
            ApiHandler::Incidents(api) => api.handle(req).await,
            ApiHandler::Endpoints(endpoints, org) => {
                match req.uri().path().trim_end_matches('/') {
                    "/api/v1/org" => org.handle(req).await,
                    // The API's description is served beside the catalogue of event types.
                    crate::api::openapi::PATH => crate::api::openapi::serve(&req),
                    _ => endpoints.handle(req).await,
                }
            }
            ApiHandler::Events(api) => api.handle(req).await,
            ApiHandler::Licenses(api) => api.handle(req).await,
            ApiHandler::Billing(api) => api.handle(req).await,
            ApiHandler::RateLimited(limit, inner) => {
                limit.serve(req, |req| Box::pin(inner.handle(req))).await
            }
            ApiHandler::Misconfigured(message) => crate::http::problem(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "not_configured",
                message.clone(),
            ),
        }
    }
}

/// Build the handler for `api` over DynamoDB (`HOOKLINE_TABLE`) and KMS
/// (`HOOKLINE_KMS_KEY_ID`, decrypted secrets cached per warm Lambda), with bearer tokens
/// verified per the `HOOKLINE_JWT_*` variables (required here: there is no dev key on AWS).
/// Secrets (`HOOKLINE_JWT_HS256_SECRET`, `*_OAUTH_CLIENT_SECRET`, `HOOKLINE_OAUTH_STATE_KEY`)
/// may live in the provider secret; the environment wins where both set one. Every API but
/// the licences one is behind `HOOKLINE_API_RATE_LIMIT` per org, counted in the table.
pub async fn aws_api(api: Api) -> Result<ApiHandler, Error> {
    aws_api_with(api, &lambda_sdk().await, &crate::config::var).await
}

/// [`aws_api`] over `sdk`, with its variables read from `env` instead of the environment.
pub async fn aws_api_with(api: Api, sdk: &SdkConfig, env: Vars<'_>) -> Result<ApiHandler, Error> {
    // Read before anything is fetched: a malformed limit stops the cold start, naming it.
    let rate = crate::api::ratelimit::Rate::from_lookup(|name| var(env, name))?;
    let cold = ColdStart::new(sdk, env);
    let lookup = cold.lookup().await?;
    let auth = match crate::auth::AuthConfig::from_lookup(&lookup)
        .map(|c| c.map(crate::auth::Authenticator::new))
    {
        Ok(Some(Ok(auth))) => auth,
        Ok(Some(Err(e))) | Err(e) => {
            tracing::error!(error = %e, "the API cannot verify bearer tokens");
            return Ok(ApiHandler::Misconfigured(format!(
                "bearer tokens cannot be verified: {e}"
            )));
        }
        Ok(None) => {
            tracing::error!("no HOOKLINE_JWT_* configuration: the API refuses every request");
            return Ok(ApiHandler::Misconfigured(
                "bearer tokens cannot be verified: set HOOKLINE_JWT_ISSUER, \
                 HOOKLINE_JWT_AUDIENCE and one of HOOKLINE_JWT_JWKS_URL, \
                 HOOKLINE_JWT_PUBLIC_KEY or HOOKLINE_JWT_HS256_SECRET"
                    .into(),
            ));
        }
    };
    if api == Api::Licenses {
        // Needs only the signing key and the tier table: no table, queue or KMS key. Not rate
        // limited either: only the operator's staff hold its scope.
        return Ok(licenses_api(auth, &lookup));
    }
    let table = cold.table()?;
    let limit = rate.map(|rate| {
        Arc::new(crate::api::ratelimit::ApiRateLimit::new(
            rate,
            auth.clone(),
            Arc::new(crate::ports::ratelimit::aws::DynamoRateLimiter::new(
                cold.dynamo(),
                table,
            )),
            Arc::new(SystemClock),
        ))
    });
    let handler = api_handler(api, &cold, &lookup, auth)?;
    Ok(match (limit, handler) {
        // A misconfigured function answers its 503 uncounted.
        (Some(limit), handler) if !matches!(handler, ApiHandler::Misconfigured(_)) => {
            ApiHandler::RateLimited(limit, Arc::new(handler))
        }
        (_, handler) => handler,
    })
}

/// The handler of one API function (not yet behind the rate limit).
fn api_handler(
    api: Api,
    cold: &ColdStart,
    lookup: &dyn Fn(&str) -> Option<String>,
    auth: crate::auth::Authenticator,
) -> Result<ApiHandler, Error> {
    use crate::connections::service::StoredProviderTokens;
    use crate::ports::connections::aws::DynamoConnectionStore;
    use crate::ports::connections::ConnectionStore;
    let store: Arc<dyn ConnectionStore> =
        Arc::new(DynamoConnectionStore::new(cold.dynamo(), cold.table()?));
    let keys = cold.keys()?;
    let tokens = Arc::new(
        StoredProviderTokens::new(store.clone(), keys.clone()).with_refresh(
            &crate::api::oauth::OAuthSettings::from_lookup(lookup),
            Arc::new(SystemClock),
        ),
    );
    Ok(match api {
        Api::Repositories => {
            let Some(base) = cold.var("WEBHOOK_BASE_URL") else {
                return Ok(ApiHandler::Misconfigured(
                    "WEBHOOK_BASE_URL (the WebhookBaseUrl parameter) must be set: the hooks \
                     Hookline creates point at it"
                        .into(),
                ));
            };
            let plans = match billing(cold, lookup) {
                Ok(billing) => billing.plans().clone(),
                Err(message) => return Ok(ApiHandler::Misconfigured(message)),
            };
            let events = event_sink(cold, lookup, plans.clone())?;
            let mut repos = aws_repositories(store, keys, tokens.clone(), cold.env, base)?
                .with_plan_gate(plans);
            if let Some(events) = events {
                // repository.connected / repository.disconnected into the org's stream.
                repos = repos.with_events(events);
            }
            // The delivery log reads the same table, and replays go on the worker's queue.
            let settings = Settings::from_lookup(cold.env)?;
            let log = crate::delivery_log::DeliveryLog::new(
                Arc::new(DynamoStore::new(cold.dynamo(), cold.table()?)),
                Arc::new(cold.queue()?),
                Arc::new(SystemClock),
                &settings,
            );
            ApiHandler::Repositories(Arc::new(
                crate::api::repositories::RepositoriesApi::new(auth, Arc::new(repos), tokens)
                    .with_delivery_log(Arc::new(log)),
            ))
        }
        Api::Incidents => ApiHandler::Incidents(Arc::new(
            crate::api::incidents::IncidentsApi::new(auth, store),
        )),
        Api::Oauth => ApiHandler::Oauth(Arc::new(crate::api::oauth::OAuthApi::new(
            auth,
            tokens,
            crate::api::oauth::OAuthSettings::from_lookup(lookup),
            Arc::new(SystemClock),
        ))),
        // Answered above, before the stores it does not need were built.
        Api::Licenses => licenses_api(auth, lookup),
        Api::Billing => match billing(cold, lookup) {
            Ok(billing) => ApiHandler::Billing(Arc::new(crate::api::billing::BillingApi::new(
                auth, billing,
            ))),
            Err(message) => ApiHandler::Misconfigured(message),
        },
        Api::Endpoints | Api::Events => {
            let plans = match billing(cold, lookup) {
                Ok(billing) => billing.plans().clone(),
                Err(message) => return Ok(ApiHandler::Misconfigured(message)),
            };
            let outbound = match outbound(cold, keys, lookup, Some(plans)) {
                Ok(o) => o,
                Err(message) => return Ok(ApiHandler::Misconfigured(message)),
            };
            let store = outbound.ports.store.clone();
            if api == Api::Events {
                ApiHandler::Events(Arc::new(crate::api::events::EventsApi::new(
                    auth,
                    outbound.publisher.clone(),
                    store,
                )))
            } else {
                ApiHandler::Endpoints(
                    Arc::new(crate::api::endpoints::EndpointsApi::new(
                        auth.clone(),
                        outbound.endpoints.clone(),
                        store,
                        outbound.replay.clone(),
                    )),
                    Arc::new(crate::api::org::OrgApi::new(
                        auth,
                        outbound.ports.orgs.clone(),
                        Arc::new(SystemClock),
                    )),
                )
            }
        }
    })
}

/// The repository service over `store`, `keys` and `tokens`: hooks on `GITHUB_API_URL` /
/// `GITLAB_URL`, pointing at `webhook_base_url`, a rotated-out secret verifying for
/// `HOOKLINE_SECRET_ROTATION_OVERLAP_SECS`.
fn aws_repositories(
    store: Arc<dyn crate::ports::connections::ConnectionStore>,
    keys: Arc<dyn crate::ports::keys::KeyService>,
    tokens: Arc<crate::connections::service::StoredProviderTokens>,
    env: Vars<'_>,
    webhook_base_url: String,
) -> Result<crate::connections::service::Repositories, Error> {
    use crate::connections::service::{Repositories, Settings as RepoSettings};
    let overlap = match var(env, "HOOKLINE_SECRET_ROTATION_OVERLAP_SECS") {
        Some(v) => v.trim().parse::<u64>().map_err(|_| {
            format!("HOOKLINE_SECRET_ROTATION_OVERLAP_SECS must be a whole number, got {v:?}")
        })?,
        None => 3600,
    };
    Ok(Repositories::new(
        store,
        keys,
        tokens,
        Arc::new(crate::hooks::github::GitHubHooks::new(
            var(env, "GITHUB_API_URL").unwrap_or_else(|| "https://api.github.com".into()),
        )),
        Arc::new(crate::hooks::gitlab::GitLabHooks::new(
            var(env, "GITLAB_URL").unwrap_or_else(|| "https://gitlab.com".into()),
        )),
        Arc::new(SystemClock),
        RepoSettings {
            webhook_base_url,
            rotation_overlap: std::time::Duration::from_secs(overlap),
        },
    ))
}

/// The `hook-health` function's service over DynamoDB (`HOOKLINE_TABLE`) and KMS
/// (`HOOKLINE_KMS_KEY_ID`), with its variables read from `env` and the provider secret
/// (OAuth client secrets, to renew expiring tokens), and `HOOK_SILENCE_ALERT`.
pub async fn aws_hook_health_with(
    sdk: &SdkConfig,
    env: Vars<'_>,
) -> Result<
    (
        Arc<crate::connections::service::Repositories>,
        crate::connections::service::health::HealthSettings,
    ),
    Error,
> {
    use crate::connections::service::{health::HealthSettings, StoredProviderTokens};
    let cold = ColdStart::new(sdk, env);
    let lookup = cold.lookup().await?;
    // Each connection keeps the URL its hook was made with; a recreated hook gets that one.
    let base = cold.var("WEBHOOK_BASE_URL").unwrap_or_default();
    let settings = HealthSettings::from_lookup(&lookup)?;
    let Some(store) = connections(&cold)? else {
        return Err("HOOKLINE_KMS_KEY_ID must be set (template.yaml sets it)".into());
    };
    let keys = cold.keys()?;
    let tokens = Arc::new(
        StoredProviderTokens::new(store.clone(), keys.clone()).with_refresh(
            &crate::api::oauth::OAuthSettings::from_lookup(&lookup),
            Arc::new(SystemClock),
        ),
    );
    let repos = aws_repositories(store, keys, tokens, env, base)?;
    Ok((Arc::new(repos), settings))
}

/// Run `hook-health` on its schedule: every invocation checks and repairs every active
/// connection's hook.
pub async fn run_hook_health() -> Result<(), Error> {
    start();
    let health = Warm::start(|| async {
        aws_hook_health_with(&lambda_sdk().await, &crate::config::var).await
    })
    .await?;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let health = health.clone();
        metered(async move {
            let health = health.get().await?;
            let (repos, settings) = &*health;
            handle_hook_health(repos, settings).await
        })
    }))
    .await
}

/// One schedule tick: check every active connection's hook and repair it; the summary (counts
/// and each connection not found healthy) is the invocation's result. A store failure fails
/// the invocation, so it shows in the function's error metrics.
pub async fn handle_hook_health(
    repos: &crate::connections::service::Repositories,
    settings: &crate::connections::service::health::HealthSettings,
) -> Result<serde_json::Value, Error> {
    let report = repos.check_hooks(true, settings).await.map_err(|e| {
        tracing::error!(error = %e, "hook health check failed");
        Error::from(e.to_string())
    })?;
    Ok(serde_json::to_value(&report)?)
}

/// The licences API from `LICENSE_PRIVATE_KEY` (the provider secret, or the environment),
/// `LICENSE_ISSUER` and `HOOKLINE_TIERS*`. Without a key it answers 503 to each request; a key
/// or tier table that does not read makes every request a 503 naming the variable.
fn licenses_api(
    auth: crate::auth::Authenticator,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> ApiHandler {
    let key = match lookup("LICENSE_PRIVATE_KEY")
        .map(|text| crate::billing::licence::LicenceKey::from_base64(&text))
    {
        None => None,
        Some(Ok(key)) => Some(match lookup("LICENSE_ISSUER") {
            Some(issuer) => key.with_issuer(issuer.trim()),
            None => key,
        }),
        Some(Err(e)) => {
            tracing::error!(error = %e, "LICENSE_PRIVATE_KEY does not read");
            return ApiHandler::Misconfigured(format!("LICENSE_PRIVATE_KEY: {e}"));
        }
    };
    let tiers = match crate::billing::tiers::TierTable::from_lookup(lookup) {
        Ok(tiers) => tiers,
        Err(e) => {
            tracing::error!(error = %e, "the tier table does not read");
            return ApiHandler::Misconfigured(e.to_string());
        }
    };
    ApiHandler::Licenses(Arc::new(crate::api::licenses::LicensesApi::new(
        auth,
        key,
        tiers,
        Arc::new(SystemClock),
    )))
}

/// Outbound webhooks over DynamoDB (`HOOKLINE_TABLE`), SQS (`HOOKLINE_DISPATCH_QUEUE_URL`,
/// `HOOKLINE_OUTBOUND_QUEUE_URL` and their dead-letter queues), KMS and SES
/// (`HOOKLINE_MAIL_FROM`), with the `OUTBOUND_*` settings; an error names what to set.
/// `plans`: the event and endpoint quotas, where this function publishes or creates them.
fn outbound(
    cold: &ColdStart,
    keys: Arc<dyn crate::ports::keys::KeyService>,
    lookup: &dyn Fn(&str) -> Option<String>,
    plans: Option<Arc<dyn crate::billing::plan::PlanGate>>,
) -> Result<crate::outbound::Outbound, String> {
    let need = |name: &str| {
        lookup(name).ok_or_else(|| format!("{name} must be set (template.yaml sets it)"))
    };
    let table = need("HOOKLINE_TABLE")?;
    let sqs = cold.sqs();
    let ports = crate::outbound::Ports {
        store: Arc::new(crate::ports::outbound::aws::DynamoOutboundStore::new(
            cold.dynamo(),
            table.clone(),
        )),
        orgs: Arc::new(crate::ports::orgs::aws::DynamoOrgStore::new(
            cold.dynamo(),
            table,
        )),
        keys,
        // Optional: without a sender owners are not mailed, and the log says why each time.
        mailer: Arc::new(crate::ports::mail::aws::SesMailer::new(
            cold.ses(),
            lookup("HOOKLINE_MAIL_FROM").unwrap_or_default(),
        )),
        dispatch_queue: Arc::new(SqsQueue::new(
            sqs.clone(),
            need("HOOKLINE_DISPATCH_QUEUE_URL")?,
            need("HOOKLINE_DISPATCH_DLQ_URL")?,
        )),
        deliveries_queue: Arc::new(SqsQueue::new(
            sqs,
            need("HOOKLINE_OUTBOUND_QUEUE_URL")?,
            need("HOOKLINE_OUTBOUND_DLQ_URL")?,
        )),
        due: None,
        clock: Arc::new(SystemClock),
    };
    Ok(crate::outbound::Outbound::assemble(
        ports,
        crate::outbound::settings::OutboundSettings::from_lookup(lookup)
            .map_err(|e| e.to_string())?,
        crate::outbound::ssrf::AddressPolicy::from_vars(lookup).map_err(|e| e.to_string())?,
        crate::outbound::catalog::EventCatalog::from_lookup(lookup)?,
        crate::outbound::deliver::random_jitter(),
        plans,
    ))
}

/// Billing over DynamoDB (`HOOKLINE_TABLE`) and SES (`HOOKLINE_MAIL_FROM`), configured from
/// `lookup` (the environment, then the provider secret): tiers from Stripe with
/// `STRIPE_SECRET_KEY`, else from `HOOKLINE_LICENSE`, else unlimited.
pub fn aws_billing(
    sdk: &aws_config::SdkConfig,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<crate::billing::service::Billing>, String> {
    billing(&ColdStart::new(sdk, &|_| None), lookup)
}

fn billing(
    cold: &ColdStart,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<crate::billing::service::Billing>, String> {
    let table = lookup("HOOKLINE_TABLE")
        .ok_or_else(|| "HOOKLINE_TABLE must be set (template.yaml sets it)".to_owned())?;
    let config = super::local::BillingConfig::from_lookup(lookup)?;
    Ok(super::assemble_billing(
        super::BillingPorts {
            store: Arc::new(crate::ports::billing::aws::DynamoBillingStore::new(
                cold.dynamo(),
                table.clone(),
            )),
            orgs: Arc::new(crate::ports::orgs::aws::DynamoOrgStore::new(
                cold.dynamo(),
                table.clone(),
            )),
            mailer: Arc::new(crate::ports::mail::aws::SesMailer::new(
                cold.ses(),
                lookup("HOOKLINE_MAIL_FROM").unwrap_or_default(),
            )),
            connections: Arc::new(crate::ports::connections::aws::DynamoConnectionStore::new(
                cold.dynamo(),
                table.clone(),
            )),
            outbound: Arc::new(crate::ports::outbound::aws::DynamoOutboundStore::new(
                cold.dynamo(),
                table,
            )),
        },
        config,
        Arc::new(SystemClock),
    ))
}

/// Billing for the functions that take no bearer tokens (the worker, `billing-reconcile`),
/// with the provider secret's values (`STRIPE_SECRET_KEY`, …) behind the environment.
pub async fn aws_billing_with(
    sdk: &SdkConfig,
    env: Vars<'_>,
) -> Result<Arc<crate::billing::service::Billing>, Error> {
    let cold = ColdStart::new(sdk, env);
    let lookup = cold.lookup().await?;
    Ok(billing(&cold, &lookup)?)
}

/// Run `billing-reconcile` on its schedule: every invocation reconciles every org with Stripe
/// and re-checks the installed licence.
pub async fn run_billing_reconcile() -> Result<(), Error> {
    start();
    let billing =
        Warm::start(|| async { aws_billing_with(&lambda_sdk().await, &crate::config::var).await })
            .await?;
    lambda_runtime::run(service_fn(move |_: LambdaEvent<serde_json::Value>| {
        let billing = billing.clone();
        metered(async move { handle_billing_reconcile(&*billing.get().await?).await })
    }))
    .await
}

/// One schedule tick: re-check the licence, then (with a Stripe key) repair the drift missed
/// webhooks left and apply the events kept for customers linked since. An `Err` fails the
/// invocation, so the failure shows in the function's error metrics.
pub async fn handle_billing_reconcile(
    billing: &crate::billing::service::Billing,
) -> Result<serde_json::Value, Error> {
    use crate::billing::plan::TierSource;
    billing.plans().recheck_licence();
    let source = billing.plans().source().name();
    // A self-hosted deployment has no Stripe to reconcile with: the licence check is the job.
    if !matches!(billing.plans().source(), TierSource::Stripe) {
        tracing::info!(
            source,
            "billing reconcile: no STRIPE_SECRET_KEY, so only the licence was re-checked"
        );
        return Ok(serde_json::json!({ "source": source, "reconciled": false }));
    }
    let done = billing.reconcile(None).await.map_err(|e| {
        tracing::error!(error = %e, "billing reconcile failed");
        Error::from(e.to_string())
    })?;
    tracing::info!(
        subscriptions_seen = done.subscriptions_seen,
        repaired = done.repaired,
        parked_applied = done.parked_applied,
        unknown_customers = done.unknown_customers,
        "billing reconcile"
    );
    let mut out = serde_json::to_value(&done)?;
    out["source"] = source.into();
    out["reconciled"] = true.into();
    Ok(out)
}

/// The dispatcher's and the deliverer's outbound side over `sdk`, with its variables read
/// from `env` (they take no bearer tokens).
pub async fn aws_outbound_with(
    sdk: &SdkConfig,
    env: Vars<'_>,
) -> Result<crate::outbound::Outbound, Error> {
    let cold = ColdStart::new(sdk, env);
    // No quotas: neither publishes events nor creates endpoints.
    Ok(outbound(
        &cold,
        cold.keys()?,
        &|name: &str| cold.var(name),
        None,
    )?)
}

/// Run the dispatcher: SQS batches of "this org has new events" signals, and a scheduled
/// sweep (any other event) for orgs whose signal was lost.
pub async fn run_dispatcher() -> Result<(), Error> {
    start();
    let outbound =
        Warm::start(|| async { aws_outbound_with(&lambda_sdk().await, &crate::config::var).await })
            .await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let outbound = outbound.clone();
        metered(async move { handle_dispatch(&*outbound.get().await?, event.payload).await })
    }))
    .await
}

/// One dispatcher invocation: an SQS batch (partial failures reported per org's messages)
/// or a schedule tick.
pub async fn handle_dispatch(
    outbound: &crate::outbound::Outbound,
    payload: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    if payload.get("Records").is_none() {
        let done = outbound.dispatcher.sweep().await?;
        tracing::info!(
            events = done.events,
            deliveries = done.deliveries,
            "outbound sweep"
        );
        return Ok(serde_json::json!({ "events": done.events, "deliveries": done.deliveries }));
    }
    let event: SqsEvent = serde_json::from_value(payload)?;
    let mut failures = Vec::new();
    for record in event.records {
        let id = record.message_id.unwrap_or_default();
        if let Err(e) = outbound
            .dispatcher
            .handle_message(record.body.as_deref().unwrap_or_default())
            .await
        {
            match e {
                crate::outbound::Error::Invalid(_) => {
                    tracing::warn!("dropping a malformed dispatch message")
                }
                e => {
                    tracing::error!(error = %e, "dispatch failed; SQS will retry it");
                    failures.push(BatchItemFailure {
                        item_identifier: id,
                    });
                }
            }
        }
    }
    Ok(serde_json::to_value(SqsBatchResponse {
        batch_item_failures: failures,
    })?)
}

/// Run the deliverer on SQS batches of attempts, all of a batch at once, reporting partial
/// batch failures.
pub async fn run_deliverer() -> Result<(), Error> {
    start();
    let outbound =
        Warm::start(|| async { aws_outbound_with(&lambda_sdk().await, &crate::config::var).await })
            .await?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| {
        let outbound = outbound.clone();
        metered(async move {
            let outbound = outbound.get().await?;
            Ok::<_, Error>(handle_deliveries(&outbound, event.payload).await)
        })
    }))
    .await
}

/// One SQS batch through the deliverer.
pub async fn handle_deliveries(
    outbound: &crate::outbound::Outbound,
    event: SqsEvent,
) -> SqsBatchResponse {
    let results = futures::future::join_all(event.records.into_iter().map(|r| async move {
        let id = r.message_id.unwrap_or_default();
        let result = outbound
            .deliverer
            .handle_message(r.body.as_deref().unwrap_or_default())
            .await;
        (id, result)
    }))
    .await;
    SqsBatchResponse {
        batch_item_failures: results
            .into_iter()
            .filter_map(|(id, r)| match r {
                Ok(_) => None,
                Err(e) => {
                    tracing::error!(error = %e, "delivery message failed; SQS will retry it");
                    Some(BatchItemFailure {
                        item_identifier: id,
                    })
                }
            })
            .collect(),
    }
}

/// Run an API function for `api`.
pub async fn run_api(api: Api) -> Result<(), Error> {
    start();
    // A limit that does not read stops the cold start here, before anything is fetched.
    crate::api::ratelimit::Rate::from_lookup(crate::config::var)?;
    let handler = Warm::start(move || aws_api(api)).await?;
    lambda_http::run(lambda_http::service_fn(move |req| {
        let handler = handler.clone();
        metered(async move { handle_api_http(&*handler.get().await?, req).await })
    }))
    .await
}

/// One API Gateway request through an API handler.
pub async fn handle_api_http(
    handler: &ApiHandler,
    req: lambda_http::Request,
) -> Result<lambda_http::Response<Body>, Error> {
    let (parts, body) = req.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(raw) => Bytes::from(raw),
    };
    let res = handler.handle(Request::from_parts(parts, bytes)).await;
    let (parts, body) = res.into_parts();
    let body = if body.is_empty() {
        Body::Empty
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(text) => Body::Text(text),
            Err(e) => Body::Binary(e.into_bytes()),
        }
    };
    Ok(lambda_http::Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Each invocation may race the background build: all of them get the one it made.
    #[tokio::test]
    async fn the_cold_start_build_runs_once_and_every_invocation_shares_it() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counted = builds.clone();
        let warm = Warm::start(move || {
            let counted = counted.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                Ok(counted.fetch_add(1, Ordering::SeqCst))
            }
        })
        .await
        .unwrap();
        let got = futures::future::join_all((0..8).map(|_| warm.get())).await;
        assert!(got.iter().all(|g| **g.as_ref().unwrap() == 0), "{got:?}");
        assert_eq!(builds.load(Ordering::SeqCst), 1);
    }

    /// A failed build (a throttled GetSecretValue) fails the invocation that waited for it,
    /// with its reason, and the next invocation builds again instead of failing for good.
    #[tokio::test]
    async fn a_failed_build_fails_its_invocation_and_the_next_one_builds_again() {
        let builds = Arc::new(AtomicUsize::new(0));
        let counted = builds.clone();
        let warm = Warm::start(move || {
            let attempt = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match attempt {
                    0 => Err(Error::from("Secrets Manager GetSecretValue s: throttled")),
                    n => Ok(n),
                }
            }
        })
        .await
        .unwrap();
        let first = warm.get().await.unwrap_err().to_string();
        assert!(first.contains("throttled"), "{first}");
        assert_eq!(*warm.get().await.unwrap(), 1);
        assert_eq!(*warm.get().await.unwrap(), 1, "built once it succeeded");
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    /// Provisioned concurrency inits ahead of the requests: the build is finished before the
    /// runtime asks for an event, and a failed one fails the cold start as before.
    #[tokio::test]
    async fn a_provisioned_cold_start_builds_before_it_asks_for_an_event() {
        let warm = Warm::start_as(Some("provisioned-concurrency".into()), || async {
            Ok::<_, Error>(7)
        })
        .await
        .unwrap();
        assert!(warm.ready.get().is_some(), "built before start returned");
        let failed = Warm::<u8>::start_as(Some("provisioned-concurrency".into()), || async {
            Err(Error::from("HOOKLINE_TABLE must be set"))
        })
        .await;
        assert!(failed.is_err());
    }
}
