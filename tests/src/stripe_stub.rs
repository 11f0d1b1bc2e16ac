//! Stripe for tests: a local stub of the two endpoints localstripe lacks (Checkout and Customer
//! Portal sessions), answering as Stripe's API reference shows and forwarding every other call
//! to localstripe, so one `STRIPE_API_BASE` serves both; and localstripe's webhook set-up.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use axum::Router;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The URL of the localstripe `infra/with-localstripe.sh` started; panics (never skips) when
/// the tests were run without it.
pub fn localstripe_url() -> String {
    match std::env::var("HOOKLINE_LOCALSTRIPE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "HOOKLINE_LOCALSTRIPE_URL is not set: these tests need localstripe. Run them with \
             infra/with-localstripe.sh cargo test … (infra/test.sh does)"
        ),
    }
}

/// A secret key localstripe accepts (it wants an `sk_` prefix and nothing else).
pub const TEST_SECRET_KEY: &str = "sk_test_hookline_e2e_4eC39HqLyjWDarjtT1zdp7dc";

/// One request the stub got (forwarded ones included).
#[derive(Debug, Clone)]
pub struct StubRequest {
    pub method: String,
    pub path: String,
    /// The form fields in order, decoded (`metadata[org_id]` stays a flat key, as sent).
    pub form: Vec<(String, String)>,
    pub idempotency_key: Option<String>,
    pub authorization: Option<String>,
    pub stripe_version: Option<String>,
}

impl StubRequest {
    /// The first value of a form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the stub knows: the prices Checkout accepts, the key it wants (any when `None`), and
/// where everything else goes.
#[derive(Debug, Clone, Default)]
pub struct StubOptions {
    pub prices: Vec<String>,
    pub api_key: Option<String>,
    pub forward_to: Option<String>,
}

/// The first answer for an idempotency key, replayed for a retry with the same parameters.
#[derive(Clone)]
struct Saved {
    path: String,
    form: Vec<(String, String)>,
    status: StatusCode,
    body: Value,
}

struct StubState {
    options: StubOptions,
    /// Refund objects `GET /v1/refunds?charge=` answers, as a test put them.
    refunds: Mutex<Vec<Value>>,
    /// Charges `GET /v1/charges/{id}` answers, as a test put them (others go to localstripe).
    objects: Mutex<Vec<Value>>,
    got: Mutex<Vec<StubRequest>>,
    saved: Mutex<HashMap<String, Saved>>,
    http: reqwest::Client,
}

/// The stub, on a loopback port until dropped.
pub struct StripeStub {
    pub url: String,
    state: Arc<StubState>,
    task: tokio::task::JoinHandle<()>,
}

impl StripeStub {
    pub async fn start(options: StubOptions) -> Self {
        let state = Arc::new(StubState {
            options,
            got: Mutex::new(Vec::new()),
            refunds: Mutex::new(Vec::new()),
            objects: Mutex::new(Vec::new()),
            saved: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
        });
        let app = Router::new()
            .route("/v1/checkout/sessions", post(checkout))
            .route("/v1/billing_portal/sessions", post(portal))
            .route("/v1/refunds", axum::routing::get(refunds))
            .route("/v1/charges/{id}", axum::routing::get(charge))
            .fallback(any(forward))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, task }
    }

    /// Checkout for these prices; everything else to localstripe at `forward_to`.
    pub async fn in_front_of(forward_to: &str, prices: &[&str]) -> Self {
        Self::start(StubOptions {
            prices: prices.iter().map(|p| p.to_string()).collect(),
            api_key: None,
            forward_to: Some(forward_to.to_string()),
        })
        .await
    }

    /// A refund Stripe has for its charge (`GET /v1/refunds?charge=` answers it).
    pub fn add_refund(&self, refund: Value) {
        self.state.refunds.lock().unwrap().push(refund);
    }

    /// A charge Stripe has (`GET /v1/charges/{id}` answers it).
    pub fn add_object(&self, charge: Value) {
        self.state.objects.lock().unwrap().push(charge);
    }

    pub fn requests(&self) -> Vec<StubRequest> {
        self.state.got.lock().unwrap().clone()
    }

    /// The requests to one path.
    pub fn requests_to(&self, path: &str) -> Vec<StubRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for StripeStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn stripe_error(status: StatusCode, error: Value) -> (StatusCode, Value) {
    (status, json!({ "error": error }))
}

fn missing(param: &str) -> (StatusCode, Value) {
    stripe_error(
        StatusCode::BAD_REQUEST,
        json!({
            "type": "invalid_request_error",
            "code": "parameter_missing",
            "message": format!("Missing required param: {param}."),
            "param": param,
        }),
    )
}

fn random_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..24].to_string()
}

/// Record the request, check its key, and answer through `make` — once per idempotency key:
/// a retry with the same parameters gets the first answer again (`Idempotent-Replayed`), with
/// other parameters Stripe's `idempotency_error`.
async fn handle(
    state: &StubState,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    make: impl FnOnce(&StubState, &StubRequest) -> (StatusCode, Value),
) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let req = StubRequest {
        method: "POST".into(),
        path: path.into(),
        form,
        idempotency_key: header(headers, "idempotency-key"),
        authorization: header(headers, "authorization"),
        stripe_version: header(headers, "stripe-version"),
    };
    state.got.lock().unwrap().push(req.clone());

    if let Some(refusal) = check_key(state, req.authorization.as_deref()) {
        return json_answer(refusal, false);
    }
    if let Some(key) = &req.idempotency_key {
        let saved = state.saved.lock().unwrap().get(key).cloned();
        if let Some(saved) = saved {
            if saved.path == req.path && saved.form == req.form {
                return json_answer((saved.status, saved.body), true);
            }
            return json_answer(
                stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "type": "idempotency_error",
                        "message": format!(
                            "Keys for idempotent requests can only be used with the same \
                             parameters they were first used with. Try using a key other than \
                             '{key}' if you meant to execute a different request."
                        ),
                    }),
                ),
                false,
            );
        }
    }
    let (status, body) = make(state, &req);
    if let Some(key) = req.idempotency_key.clone() {
        state.saved.lock().unwrap().insert(
            key,
            Saved {
                path: req.path.clone(),
                form: req.form.clone(),
                status,
                body: body.clone(),
            },
        );
    }
    json_answer((status, body), false)
}

fn json_answer((status, body): (StatusCode, Value), replayed: bool) -> Response {
    let mut res = (status, body.to_string()).into_response();
    res.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", "true".parse().unwrap());
    }
    res
}

/// Stripe's 401s: no key, or another key (whose tail Stripe echoes, as it does).
fn check_key(state: &StubState, authorization: Option<&str>) -> Option<(StatusCode, Value)> {
    let want = state.options.api_key.as_deref()?;
    let given = authorization.and_then(|a| a.strip_prefix("Bearer "));
    match given {
        Some(k) if k == want => None,
        Some(k) => {
            let tail = &k[k.len().saturating_sub(4)..];
            let prefix = if k.starts_with("sk_live_") {
                "sk_live_"
            } else {
                "sk_test_"
            };
            Some(stripe_error(
                StatusCode::UNAUTHORIZED,
                json!({
                    "type": "invalid_request_error",
                    "message": format!("Invalid API Key provided: {prefix}{}{tail}", "*".repeat(16)),
                }),
            ))
        }
        None => Some(stripe_error(
            StatusCode::UNAUTHORIZED,
            json!({
                "type": "invalid_request_error",
                "message": "You did not provide an API key. You need to provide your API key in \
                            the Authorization header, using Bearer auth.",
            }),
        )),
    }
}

async fn checkout(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let customer_check = customer_exists(&state, &headers, &body).await;
    handle(
        &state,
        "/v1/checkout/sessions",
        &headers,
        &body,
        |state, req| {
            let Some(mode) = req.field("mode") else {
                return missing("mode");
            };
            if !matches!(mode, "payment" | "subscription" | "setup") {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "type": "invalid_request_error",
                        "code": "parameter_invalid_empty",
                        "message": "Invalid mode: must be one of payment, setup, or subscription",
                        "param": "mode",
                    }),
                );
            }
            let Some(success_url) = req.field("success_url") else {
                return missing("success_url");
            };
            let Some(price) = req.field("line_items[0][price]") else {
                return missing("line_items");
            };
            if !state.options.prices.iter().any(|p| p == price) {
                return stripe_error(
                    StatusCode::BAD_REQUEST,
                    json!({
                        "type": "invalid_request_error",
                        "code": "resource_missing",
                        "message": format!("No such price: '{price}'"),
                        "param": "line_items[0][price]",
                    }),
                );
            }
            if let Some(refusal) = customer_check {
                return refusal;
            }
            let id = format!("cs_test_{}", random_suffix());
            let metadata: serde_json::Map<String, Value> = req
                .form
                .iter()
                .filter_map(|(k, v)| {
                    let key = k.strip_prefix("metadata[")?.strip_suffix(']')?;
                    Some((key.to_string(), Value::String(v.clone())))
                })
                .collect();
            (
                StatusCode::OK,
                json!({
                    "id": id,
                    "object": "checkout.session",
                    "cancel_url": req.field("cancel_url"),
                    "client_reference_id": req.field("client_reference_id"),
                    "created": chrono::Utc::now().timestamp(),
                    "customer": req.field("customer"),
                    "expires_at": chrono::Utc::now().timestamp() + 24 * 3600,
                    "livemode": false,
                    "metadata": metadata,
                    "mode": mode,
                    "payment_status": "unpaid",
                    "status": "open",
                    "subscription": null,
                    "success_url": success_url,
                    "url": format!("https://checkout.stripe.com/c/pay/{id}"),
                }),
            )
        },
    )
    .await
}

/// `GET /v1/refunds?charge=ch_…`: the refunds a test put for that charge, as Stripe lists.
async fn refunds(
    State(state): State<Arc<StubState>>,
    axum::extract::Query(query): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some(charge) = query.get("charge") else {
        return json_answer(missing("charge"), false);
    };
    let data: Vec<Value> = state
        .refunds
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["charge"].as_str() == Some(charge.as_str()))
        .cloned()
        .collect();
    json_answer(
        (
            StatusCode::OK,
            json!({"object": "list", "url": "/v1/refunds", "has_more": false, "data": data}),
        ),
        false,
    )
}

/// `GET /v1/charges/{id}`: a charge a test put, or Stripe's 404.
async fn charge(
    State(state): State<Arc<StubState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let found = state
        .objects
        .lock()
        .unwrap()
        .iter()
        .find(|o| o["id"].as_str() == Some(id.as_str()))
        .cloned();
    match found {
        Some(o) => json_answer((StatusCode::OK, o), false),
        None => json_answer(
            stripe_error(
                StatusCode::NOT_FOUND,
                json!({"type": "invalid_request_error", "code": "resource_missing",
                       "message": format!("No such charge: '{id}'"), "param": "id"}),
            ),
            false,
        ),
    }
}

async fn portal(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Response {
    let customer_check = customer_exists(&state, &headers, &body).await;
    handle(
        &state,
        "/v1/billing_portal/sessions",
        &headers,
        &body,
        |_, req| {
            let Some(customer) = req.field("customer") else {
                return missing("customer");
            };
            if let Some(refusal) = customer_check {
                return refusal;
            }
            let id = format!("bps_{}", random_suffix());
            (
                StatusCode::OK,
                json!({
                    "id": id,
                    "object": "billing_portal.session",
                    "configuration": "bpc_test_default",
                    "created": chrono::Utc::now().timestamp(),
                    "customer": customer,
                    "flow": null,
                    "livemode": false,
                    "locale": null,
                    "on_behalf_of": null,
                    "return_url": req.field("return_url"),
                    "url": format!("https://billing.stripe.com/p/session/test_{}", random_suffix()),
                }),
            )
        },
    )
    .await
}

/// With localstripe behind the stub, a session for a customer it does not know is refused as
/// Stripe refuses it; without, any `customer` is taken at its word.
async fn customer_exists(
    state: &StubState,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<(StatusCode, Value)> {
    let base = state.options.forward_to.as_deref()?;
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let customer = form.iter().find(|(k, _)| k == "customer")?.1.clone();
    let mut req = state.http.get(format!("{base}/v1/customers/{customer}"));
    if let Some(auth) = headers.get("authorization") {
        req = req.header("authorization", auth);
    }
    let res = req.send().await.ok()?;
    if res.status().is_success() {
        return None;
    }
    Some(stripe_error(
        StatusCode::BAD_REQUEST,
        json!({
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": format!("No such customer: '{customer}'"),
            "param": "customer",
        }),
    ))
}

/// Every other call: recorded, then passed to localstripe as it came, or Stripe's 404 for an
/// unknown URL when there is none behind the stub.
async fn forward(State(state): State<Arc<StubState>>, req: axum::extract::Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let form = if parts.method == Method::GET {
        serde_urlencoded::from_str(parts.uri.query().unwrap_or("")).unwrap_or_default()
    } else {
        serde_urlencoded::from_bytes(&body).unwrap_or_default()
    };
    state.got.lock().unwrap().push(StubRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        form,
        idempotency_key: header(&parts.headers, "idempotency-key"),
        authorization: header(&parts.headers, "authorization"),
        stripe_version: header(&parts.headers, "stripe-version"),
    });
    let Some(base) = state.options.forward_to.as_deref() else {
        let (status, body) = stripe_error(
            StatusCode::NOT_FOUND,
            json!({
                "type": "invalid_request_error",
                "message": format!(
                    "Unrecognized request URL ({}: {}).",
                    parts.method,
                    parts.uri.path()
                ),
            }),
        );
        return json_answer((status, body), false);
    };
    let mut out = state
        .http
        .request(parts.method.clone(), format!("{base}{path_and_query}"))
        .body(body);
    for name in [
        "authorization",
        "content-type",
        "idempotency-key",
        "stripe-version",
    ] {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v);
        }
    }
    match out.send().await {
        Ok(res) => {
            let status = res.status();
            let content_type = res.headers().get("content-type").cloned();
            let bytes = res.bytes().await.unwrap_or_default();
            let mut answer = Response::new(axum::body::Body::from(bytes));
            *answer.status_mut() = status;
            if let Some(ct) = content_type {
                answer.headers_mut().insert("content-type", ct);
            }
            answer
        }
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            format!("the Stripe stub could not reach {base}: {e}"),
        )
            .into_response(),
    }
}

/// A webhook endpoint registered in localstripe; it stays registered (localstripe cannot
/// delete one) until [`LocalstripeWebhook::disable`] narrows it to no events.
pub struct LocalstripeWebhook {
    pub id: String,
    base: String,
    url: String,
    secret: String,
}

impl LocalstripeWebhook {
    /// Stop sending to this endpoint (localstripe then sends it no event type).
    pub async fn disable(&self) {
        register(&self.base, &self.id, &self.url, &self.secret, Some(&[])).await;
    }
}

/// Register `url` in localstripe at `base` for every event, signed with `secret` as Stripe
/// signs (`Stripe-Signature: t=…,v1=…`). localstripe's endpoints see every event of the
/// account, so a test picks out its own by customer or object id.
pub async fn localstripe_webhook(base: &str, url: &str, secret: &str) -> LocalstripeWebhook {
    localstripe_webhook_for(base, url, secret, None).await
}

/// As [`localstripe_webhook`], for these event types only (`None`: all).
pub async fn localstripe_webhook_for(
    base: &str,
    url: &str,
    secret: &str,
    events: Option<&[&str]>,
) -> LocalstripeWebhook {
    let id = format!("we_{}", random_suffix());
    register(base, &id, url, secret, events).await;
    LocalstripeWebhook {
        id,
        base: base.to_string(),
        url: url.to_string(),
        secret: secret.to_string(),
    }
}

/// `POST /_config/webhooks/{id}` (localstripe's own set-up route, JSON body).
async fn register(base: &str, id: &str, url: &str, secret: &str, events: Option<&[&str]>) {
    let mut body = json!({ "url": url, "secret": secret });
    if let Some(events) = events {
        body["events"] = json!(events);
    }
    let res = reqwest::Client::new()
        .post(format!("{base}/_config/webhooks/{id}"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("localstripe at {base} did not answer: {e}"));
    let status = res.status();
    assert!(
        status.is_success(),
        "localstripe refused webhook {id}: HTTP {status}: {}",
        res.text().await.unwrap_or_default()
    );
}
