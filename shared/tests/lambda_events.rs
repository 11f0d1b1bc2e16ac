//! Every sample event in `events/` goes through the function code exactly as Lambda runs it:
//! parsed by `lambda_http` (API Gateway HTTP API payload 2.0, base64 bodies included) or
//! `aws_lambda_events` (SQS), then handed to the same `handle_http` / `handle_sqs` the Lambda
//! binaries run — over the embedded adapters instead of DynamoDB and SQS.

use hookline::clock::ManualClock;
use hookline::config::Settings;
use hookline::model::{DeliveryStatus, Source};
use hookline::ports::sqlite::Durability;
use hookline::providers::ProviderSecrets;
use hookline::runtime::lambda::{handle_http, handle_sqs};
use hookline::runtime::local::{embedded_app, LOCAL_QUEUE};
use hookline::runtime::App;
use std::sync::Arc;
use std::time::Duration;

/// The time every sample event was signed at (events/README.md).
const EVENTS_SIGNED_AT: i64 = 1_767_225_600;

fn dev_secrets() -> ProviderSecrets {
    ProviderSecrets::from_lookup(|name| {
        Some(
            match name {
                "GITHUB_WEBHOOK_SECRET" => "dev-github-secret",
                "GITLAB_WEBHOOK_TOKEN" => "dev-gitlab-token",
                "JIRA_WEBHOOK_SECRET" => "dev-jira-secret",
                "STRIPE_WEBHOOK_SECRET" => "whsec_dev_stripe_secret",
                "TWILIO_AUTH_TOKEN" => "dev-twilio-token",
                "WHATSAPP_APP_SECRET" => "dev-whatsapp-secret",
                "WHATSAPP_VERIFY_TOKEN" => "dev-whatsapp-verify",
                _ => return None,
            }
            .to_string(),
        )
    })
}

fn app(dir: &std::path::Path) -> App {
    // No WEBHOOK_BASE_URL: Twilio's signed URL is rebuilt from the event's Host header. The
    // records must outlive the real clock, which the delivery log compares TTLs with.
    let settings = Settings {
        delivery_ttl: Duration::from_secs(3 * 365 * 24 * 3600),
        ..Settings::default()
    };
    embedded_app(
        dir,
        dev_secrets(),
        settings,
        LOCAL_QUEUE,
        Durability::Normal,
        Arc::new(ManualClock::at_unix(EVENTS_SIGNED_AT + 5)),
    )
    .unwrap()
}

fn event(name: &str) -> String {
    let path = format!("{}/../events/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn http_event(name: &str) -> lambda_http::Request {
    let parsed: lambda_http::request::LambdaRequest = serde_json::from_str(&event(name)).unwrap();
    lambda_http::Request::from(parsed)
}

async fn invoke(app: &App, source: Source, name: &str) -> (u16, String) {
    let res = handle_http(&app.pipeline, source, http_event(name))
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = match res.into_body() {
        lambda_http::Body::Text(t) => t,
        lambda_http::Body::Binary(b) => String::from_utf8(b).unwrap(),
        lambda_http::Body::Empty => String::new(),
    };
    (status, body)
}

#[tokio::test]
async fn every_inbound_sample_event_is_accepted_by_its_function() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let signed_at = chrono::DateTime::from_timestamp(EVENTS_SIGNED_AT + 5, 0).unwrap();
    let cases = [
        (Source::Github, "github-push.json", "push"),
        (
            Source::Github,
            "github-workflow-run-failure.json",
            "workflow_run",
        ),
        (Source::Gitlab, "gitlab-pipeline.json", "pipeline"),
        (
            Source::Jira,
            "jira-issue-created.json",
            "jira:issue_created",
        ),
        (Source::Stripe, "stripe-invoice-paid.json", "invoice.paid"),
        (
            Source::Twilio,
            "twilio-message-status.json",
            "message_status",
        ),
        (Source::Twilio, "twilio-inbound-message.json", "message"),
        (
            Source::Whatsapp,
            "whatsapp-message.json",
            "whatsapp_business_account.messages",
        ),
    ];
    for (source, name, event_type) in cases {
        let (status, body) = invoke(&app, source, name).await;
        assert_eq!(status, 202, "{name}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "queued", "{name}");
        let listed = app.store.list(&Default::default()).await.unwrap();
        assert_eq!(listed[0].event_type, event_type, "{name}");
        assert_eq!(listed[0].status, DeliveryStatus::Queued, "{name}");
        // The payload is kept exactly as the provider sent it: the event's body, decoded from
        // base64 where API Gateway encoded it (Twilio's form posts in the samples).
        let sample: serde_json::Value = serde_json::from_str(&event(name)).unwrap();
        let text = sample["body"].as_str().unwrap();
        let sent = if sample["isBase64Encoded"] == true {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .unwrap()
        } else {
            text.as_bytes().to_vec()
        };
        let kept = app
            .store
            .get_payload(&listed[0].key(), signed_at)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: no payload kept"));
        assert!(
            kept.body == sent,
            "{name}: the kept payload is not the body sent"
        );
        // The same event again is a duplicate, as a provider's redelivery would be.
        assert_eq!(invoke(&app, source, name).await.0, 200, "{name} again");
    }
    let queued = app.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(queued.len(), cases.len());
}

#[tokio::test]
async fn the_whatsapp_verification_event_is_answered_with_its_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    assert_eq!(
        invoke(&app, Source::Whatsapp, "whatsapp-verify.json").await,
        (200, "1158201444".into())
    );
}

#[tokio::test]
async fn the_sqs_sample_event_is_processed_by_the_worker_once() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    // The SQS sample carries the envelope of github-push.json: record that delivery first.
    assert_eq!(
        invoke(&app, Source::Github, "github-push.json").await.0,
        202
    );
    let sqs: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_str(&event("sqs-delivery.json")).unwrap();
    let response = handle_sqs(&app.worker, sqs.clone()).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "{:?}",
        response.batch_item_failures
    );
    let delivery = &app.store.list(&Default::default()).await.unwrap()[0];
    assert_eq!(delivery.status, DeliveryStatus::Processed);
    assert_eq!(delivery.attempts, 1);
    let activity = app.store.list_activities(10).await.unwrap();
    assert_eq!(activity.len(), 1);
    assert_eq!(activity[0].event_type, "push");

    // Redelivered by SQS: acknowledged without processing it again.
    let again = handle_sqs(&app.worker, sqs).await;
    assert!(again.batch_item_failures.is_empty());
    assert_eq!(
        app.store.list(&Default::default()).await.unwrap()[0].attempts,
        1
    );
}

#[tokio::test]
async fn an_unreadable_sqs_message_is_reported_as_a_batch_item_failure() {
    let dir = tempfile::tempdir().unwrap();
    let app = app(dir.path());
    let mut sqs: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_str(&event("sqs-delivery.json")).unwrap();
    let mut broken = sqs.records[0].clone();
    broken.message_id = Some("broken-1".into());
    broken.body = Some("{not json".into());
    sqs.records.push(broken);
    let response = handle_sqs(&app.worker, sqs).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, vec!["broken-1"]);
}

#[tokio::test]
async fn a_stale_stripe_event_is_refused_against_the_real_clock() {
    let dir = tempfile::tempdir().unwrap();
    let app = embedded_app(
        dir.path(),
        dev_secrets(),
        Settings::default(),
        LOCAL_QUEUE,
        Durability::Normal,
        Arc::new(hookline::clock::SystemClock),
    )
    .unwrap();
    let (status, body) = invoke(&app, Source::Stripe, "stripe-invoice-paid.json").await;
    assert_eq!(status, 401, "{body}");
    assert!(app
        .store
        .list(&Default::default())
        .await
        .unwrap()
        .is_empty());
}

// ---- The API functions' sample events (repositories-api, oauth-api, incidents-api) ----

/// An app serving the API routes over the embedded adapters, with OAuth against the stub.
async fn api_app(dir: &std::path::Path, stub: &hookline::hooks::stub::HookApiStub) -> App {
    use hookline::runtime::local::{with_oauth, with_repositories, RepositoriesConfig};
    let app = app(dir);
    let clock: Arc<dyn hookline::clock::Clock> = Arc::new(hookline::clock::SystemClock);
    let app = with_repositories(
        app,
        dir,
        "https://hooks.example.com",
        RepositoriesConfig {
            github_api_url: stub.url().to_string(),
            gitlab_url: stub.url().to_string(),
            auth: None,
            rotation_overlap: Duration::from_secs(3600),
            oauth: None,
        },
        clock.clone(),
    )
    .unwrap();
    let oauth = hookline::api::oauth::OAuthSettings {
        client: stub.oauth(),
        github: Some(stub.oauth_app()),
        gitlab: Some(stub.oauth_app()),
        state_key: None,
        public_base_url: None,
        success_url: None,
        state_max_age: hookline::hooks::oauth::OAuthState::MAX_AGE,
    };
    with_oauth(app, dir, "https://hooks.example.com", oauth, None, clock).unwrap()
}

async fn invoke_api(
    handler: &hookline::runtime::lambda::ApiHandler,
    req: lambda_http::Request,
) -> (u16, serde_json::Value) {
    let res = hookline::runtime::lambda::handle_api_http(handler, req)
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body = match res.into_body() {
        lambda_http::Body::Text(t) => t,
        lambda_http::Body::Binary(b) => String::from_utf8(b).unwrap(),
        lambda_http::Body::Empty => String::new(),
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// A token the data dir's dev key signed, for the user and org the sample events name.
fn bearer(dir: &std::path::Path, scopes: &[hookline::auth::Scope]) -> http::HeaderValue {
    let issuer = hookline::auth::LocalIssuer::open(dir).unwrap();
    let token = issuer.issue(
        &hookline::auth::OrgId::from("org_acme"),
        &hookline::auth::UserId::from("user_mona"),
        &scopes.iter().copied().collect(),
        Duration::from_secs(600),
    );
    http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap()
}

#[tokio::test]
async fn the_api_sample_events_are_answered_by_their_functions() {
    use hookline::auth::Scope;
    use hookline::runtime::lambda::ApiHandler;
    let dir = tempfile::tempdir().unwrap();
    let stub = hookline::hooks::stub::HookApiStub::start().await;
    let app = api_app(dir.path(), &stub).await;
    let repositories = ApiHandler::Repositories(app.repositories.clone().unwrap());
    let oauth = ApiHandler::Oauth(app.oauth.clone().unwrap());
    let incidents = ApiHandler::Incidents(app.incidents.clone().unwrap());
    let cases = [
        (
            &repositories,
            "repositories-api-list-connections.json",
            Scope::ReposRead,
        ),
        (&oauth, "oauth-api-github-authorize.json", Scope::ReposWrite),
        (&incidents, "incidents-api-list.json", Scope::ReposRead),
    ];
    for (handler, name, scope) in cases {
        // As shipped, the placeholder token verifies nowhere.
        let (status, body) = invoke_api(handler, http_event(name)).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(body["error"], "unauthorized", "{name}");

        // With a real token for the same user and org, the function answers.
        let mut req = http_event(name);
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, bearer(dir.path(), &[scope]));
        let (status, body) = invoke_api(handler, req).await;
        assert_eq!(status, 200, "{name}: {body}");
        match name {
            "repositories-api-list-connections.json" => {
                assert_eq!(body["connections"], serde_json::json!([]))
            }
            "oauth-api-github-authorize.json" => {
                let url = body["authorize_url"].as_str().unwrap();
                assert!(url.starts_with(&format!("{}/login/oauth/authorize?", stub.url())));
                assert_eq!(
                    body["redirect_uri"],
                    "https://hooks.example.com/api/v1/oauth/github/callback"
                );
            }
            _ => assert!(body.is_object(), "{name}: {body}"),
        }
    }
}

#[tokio::test]
async fn the_hook_health_schedule_event_runs_one_check_that_recreates_a_deleted_hook() {
    use hookline::auth::Scope;
    use hookline::connections::service::health::HealthSettings;
    use hookline::runtime::lambda::handle_hook_health;
    let dir = tempfile::tempdir().unwrap();
    let stub = hookline::hooks::stub::HookApiStub::start().await;
    let app = api_app(dir.path(), &stub).await;
    let api = app.repositories.clone().unwrap();
    let call = |method: &str, path: &str, body: serde_json::Value| {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(
                http::header::AUTHORIZATION,
                bearer(dir.path(), &[Scope::ReposRead, Scope::ReposWrite]),
            )
            .body(bytes::Bytes::from(body.to_string()))
            .unwrap();
        api.handle(req)
    };
    let res = call(
        "PUT",
        "/api/v1/provider-tokens/github",
        serde_json::json!({"access_token": "gho_sample"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = call(
        "POST",
        "/api/v1/repositories/connect",
        serde_json::json!({"repository_full_name": "acme/hookline-demo"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let hook = stub.hooks("acme/hookline-demo")[0].clone();
    assert!(stub.remove_hook(hook.id));

    let tick: serde_json::Value =
        serde_json::from_str(&event("hook-health-schedule.json")).unwrap();
    assert!(
        tick.get("Records").is_none(),
        "a schedule tick, not an SQS batch"
    );
    let done = handle_hook_health(app.hooks.as_ref().unwrap(), &HealthSettings::default())
        .await
        .unwrap();
    assert_eq!(
        (&done["checked"], &done["recreated"]),
        (&1.into(), &1.into()),
        "{done}"
    );
    assert_eq!(done["repair"], true, "{done}");
    assert_eq!(stub.hooks("acme/hookline-demo").len(), 1);
}

#[tokio::test]
async fn the_oauth_callback_sample_event_is_refused_until_its_state_is_genuine() {
    use hookline::hooks::oauth::OAuthState;
    use hookline::runtime::lambda::ApiHandler;
    let dir = tempfile::tempdir().unwrap();
    let stub = hookline::hooks::stub::HookApiStub::start().await;
    let app = api_app(dir.path(), &stub).await;
    let oauth = ApiHandler::Oauth(app.oauth.clone().unwrap());

    let (status, body) = invoke_api(&oauth, http_event("oauth-api-github-callback.json")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_state");

    // The same redirect with a state this server signed, and a code the stub granted.
    let text = event("oauth-api-github-callback.json");
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
    let canned_state = parsed["queryStringParameters"]["state"].as_str().unwrap();
    let code = parsed["queryStringParameters"]["code"].as_str().unwrap();
    let key = hookline::api::oauth::local_state_key(dir.path()).unwrap();
    let (state, signed) = OAuthState::issue(
        &key,
        "user_mona",
        "org_acme",
        hookline::hooks::HookProvider::GitHub,
        chrono::Utc::now(),
    );
    let token = stub.grant_code(code);
    // The browser that started it holds the cookie with the state's nonce.
    let canned_cookie = parsed["cookies"][0].as_str().unwrap();
    assert!(canned_cookie.starts_with("hookline_oauth_github="));
    let patched = text.replace(canned_state, &state).replace(
        canned_cookie,
        &format!("hookline_oauth_github={}", signed.nonce),
    );
    let parsed: lambda_http::request::LambdaRequest = serde_json::from_str(&patched).unwrap();
    let (status, body) = invoke_api(&oauth, lambda_http::Request::from(parsed)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["connected"], true);
    assert_eq!(body["provider"], "github");
    assert!(!body.to_string().contains(token.expose()));
}

#[tokio::test]
async fn the_delivery_log_sample_events_are_answered_by_the_repositories_function() {
    use hookline::auth::Scope;
    use hookline::model::{DeliveryKey, DeliveryOutcome, DeliveryStatus, Owner, Source};
    use hookline::runtime::lambda::ApiHandler;
    let dir = tempfile::tempdir().unwrap();
    let stub = hookline::hooks::stub::HookApiStub::start().await;
    let app = api_app(dir.path(), &stub).await;
    let repositories = ApiHandler::Repositories(app.repositories.clone().unwrap());
    // The delivery the replay sample names, processed, of org_acme's connected repository.
    let key = DeliveryKey::new(Source::Github, "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    let now = chrono::Utc::now();
    let mut new =
        hookline::ports::store::conformance::new_delivery(Source::Github, key.delivery_id(), now);
    new.owner = Some(Owner {
        org_id: "org_acme".into(),
        connection_id: Some("rpc_sample".into()),
        repository_full_name: Some("acme/hookline-demo".into()),
    });
    app.store.record(&new).await.unwrap();
    app.store
        .put_payload(&key, &hookline::ports::store::conformance::payload(now))
        .await
        .unwrap();
    let done = DeliveryOutcome {
        status: DeliveryStatus::Failed,
        error: Some("handler failed".into()),
        processed_at: now,
        duration_ms: 4,
    };
    app.store.finish(&key, &done).await.unwrap();
    for (name, scope, expected) in [
        (
            "repositories-api-list-webhook-deliveries.json",
            Scope::ReposRead,
            200,
        ),
        (
            "repositories-api-get-webhook-delivery.json",
            Scope::ReposRead,
            200,
        ),
        (
            "repositories-api-replay-webhook-delivery.json",
            Scope::ReposWrite,
            202,
        ),
    ] {
        let (status, body) = invoke_api(&repositories, http_event(name)).await;
        assert_eq!(status, 401, "{name}: {body}");
        let mut req = http_event(name);
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, bearer(dir.path(), &[scope]));
        let (status, body) = invoke_api(&repositories, req).await;
        assert_eq!(status, expected, "{name}: {body}");
        if name.contains("list") {
            assert_eq!(body["deliveries"][0]["id"], key.log_id(), "{body}");
        } else if expected == 200 {
            assert_eq!(body["id"], key.log_id(), "{body}");
            assert_eq!(body["payload_expired"], false, "{body}");
        } else {
            assert_eq!(body["attempt"], 1, "{body}");
        }
    }
}

// ---- The outbound functions' sample events (endpoints-api, events-api, dispatcher, deliverer) ----

/// Outbound over the embedded adapters in `dir`, as the local server runs it.
fn outbound_app(dir: &std::path::Path) -> App {
    use hookline::runtime::local::{with_outbound, OutboundConfig};
    let config = OutboundConfig {
        settings: hookline::outbound::settings::OutboundSettings::default(),
        policy: hookline::outbound::ssrf::AddressPolicy::strict(),
        catalog: hookline::outbound::catalog::EventCatalog::default(),
        auth: None,
        jitter: Arc::new(|| 0.0),
        concurrency: 8,
    };
    with_outbound(
        app(dir),
        dir,
        config,
        Arc::new(hookline::clock::SystemClock),
    )
    .unwrap()
}

/// API Gateway's event for a `GET` of `path` with no token (the list-deliveries sample's
/// context, its route and query taken away).
fn unauthenticated_get(path: &str) -> lambda_http::Request {
    let mut event: serde_json::Value =
        serde_json::from_str(&event("endpoints-api-list-deliveries.json")).unwrap();
    event["rawPath"] = path.into();
    event["rawQueryString"] = "".into();
    event["routeKey"] = format!("GET {path}").into();
    event["requestContext"]["http"]["path"] = path.into();
    event
        .as_object_mut()
        .unwrap()
        .remove("queryStringParameters");
    if let Some(headers) = event["headers"].as_object_mut() {
        headers.remove("authorization");
    }
    let parsed: lambda_http::request::LambdaRequest = serde_json::from_value(event).unwrap();
    lambda_http::Request::from(parsed)
}

#[tokio::test]
async fn the_endpoints_function_serves_the_openapi_document_without_a_token() {
    use hookline::runtime::lambda::ApiHandler;
    let dir = tempfile::tempdir().unwrap();
    let app = outbound_app(dir.path());
    let endpoints = ApiHandler::Endpoints(
        app.endpoints_api.clone().unwrap(),
        app.org_api.clone().unwrap(),
    );
    let (status, body) = invoke_api(&endpoints, http_event("endpoints-api-openapi.json")).await;
    assert_eq!(status, 200, "{body}");
    let checked_in: serde_json::Value =
        serde_json::from_str(hookline::api::openapi::CHECKED_IN).unwrap();
    assert_eq!(body, checked_in);
    assert_eq!(body["openapi"], "3.1.0");
    // The rest of the function still needs a token.
    let (status, _) = invoke_api(&endpoints, unauthenticated_get("/api/v1/endpoints")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn the_outbound_sample_events_are_answered_by_their_functions() {
    use hookline::auth::Scope;
    use hookline::runtime::lambda::ApiHandler;
    let dir = tempfile::tempdir().unwrap();
    let app = outbound_app(dir.path());
    let endpoints = ApiHandler::Endpoints(
        app.endpoints_api.clone().unwrap(),
        app.org_api.clone().unwrap(),
    );
    let events = ApiHandler::Events(app.events_api.clone().unwrap());
    for (handler, name, scope, expected) in [
        (
            &endpoints,
            "endpoints-api-create.json",
            Scope::WebhooksManage,
            201,
        ),
        (
            &endpoints,
            "endpoints-api-list-deliveries.json",
            Scope::WebhooksManage,
            200,
        ),
        (&events, "events-api-publish.json", Scope::EventsWrite, 202),
    ] {
        let (status, body) = invoke_api(handler, http_event(name)).await;
        assert_eq!(status, 401, "{name}: {body}");
        let mut req = http_event(name);
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, bearer(dir.path(), &[scope]));
        let (status, body) = invoke_api(handler, req).await;
        assert_eq!(status, expected, "{name}: {body}");
        if name == "endpoints-api-create.json" {
            assert!(body["secret"].as_str().unwrap().starts_with("whsec_"));
            assert_eq!(body["url"], "https://receiver.example.com/hookline");
        }
        if name == "events-api-publish.json" {
            assert_eq!(body["id"], "inv_2026_0042_paid");
        }
    }

    // The dispatcher fans the published event out to the endpoint created above; the
    // schedule's sweep then finds nothing left.
    let outbound = app.outbound.clone().unwrap();
    let dispatched = hookline::runtime::lambda::handle_dispatch(
        &outbound,
        serde_json::from_str(&event("sqs-dispatch.json")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(dispatched["batchItemFailures"], serde_json::json!([]));
    let (page, _) = outbound
        .ports
        .store
        .list_deliveries(
            "org_acme",
            &hookline::ports::outbound::DeliveryFilter {
                event_type: Some("invoice.paid".into()),
                ..Default::default()
            },
            10,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        page.len(),
        1,
        "one delivery of invoice.paid to the one endpoint"
    );
    let swept = hookline::runtime::lambda::handle_dispatch(
        &outbound,
        serde_json::from_str(&event("dispatcher-sweep.json")).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(swept["events"], 0);

    // The deliverer's sample names a delivery this store never had: dropped, not retried.
    let sqs: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_str(&event("sqs-outbound-delivery.json")).unwrap();
    let answer = hookline::runtime::lambda::handle_deliveries(&outbound, sqs).await;
    assert!(answer.batch_item_failures.is_empty());
}

// ---- The billing functions' sample events (billing-api, billing-reconcile) ----

/// Stripe's API on a loopback port as the billing samples need it: a customer and a Checkout
/// Session created (form-encoded in, the object out, as Stripe's reference shows), and an
/// empty subscription list for reconciliation. Records each call's method, path and form.
async fn stripe_api() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::routing::{get, post};
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let json = |v: serde_json::Value| ([("content-type", "application/json")], v.to_string());
    let log = |calls: &Arc<std::sync::Mutex<Vec<String>>>, what: String| {
        calls.lock().unwrap().push(what);
    };
    let app = axum::Router::new()
        .route(
            "/v1/customers",
            post({
                let calls = calls.clone();
                move |body: String| async move {
                    log(&calls, format!("POST /v1/customers {body}"));
                    json(serde_json::json!({"id": "cus_sample_1", "object": "customer"}))
                }
            }),
        )
        .route(
            "/v1/checkout/sessions",
            post({
                let calls = calls.clone();
                move |body: String| async move {
                    log(&calls, format!("POST /v1/checkout/sessions {body}"));
                    json(serde_json::json!({
                        "id": "cs_test_sample_1", "object": "checkout.session",
                        "mode": "subscription",
                        "url": "https://checkout.stripe.com/c/pay/cs_test_sample_1",
                    }))
                }
            }),
        )
        .route(
            "/v1/subscriptions",
            get({
                let calls = calls.clone();
                move || async move {
                    log(&calls, "GET /v1/subscriptions".into());
                    json(serde_json::json!({"object": "list", "has_more": false, "data": []}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, calls)
}

#[tokio::test]
async fn the_billing_sample_events_are_answered_by_their_functions() {
    use hookline::auth::Scope;
    use hookline::runtime::lambda::{handle_billing_reconcile, ApiHandler};
    use hookline::runtime::local::{with_billing, BillingConfig};
    let dir = tempfile::tempdir().unwrap();
    let (stripe, calls) = stripe_api().await;
    let env = std::collections::HashMap::from([
        ("STRIPE_SECRET_KEY", "sk_test_lambda_events".to_owned()),
        ("STRIPE_API_BASE", stripe),
        ("STRIPE_PRICE_ID_TEAM", "price_team_sample".to_owned()),
    ]);
    let config = BillingConfig::from_lookup(&|name: &str| env.get(name).cloned()).unwrap();
    let app = with_billing(
        app(dir.path()),
        dir.path(),
        config,
        Arc::new(hookline::clock::SystemClock),
    )
    .unwrap();
    let billing_api = ApiHandler::Billing(app.billing_api.clone().unwrap());
    for (name, scope, expected) in [
        ("billing-api-entitlements.json", Scope::ReposRead, 200),
        ("billing-api-checkout.json", Scope::BillingManage, 200),
    ] {
        // As shipped, the placeholder token verifies nowhere.
        let (status, body) = invoke_api(&billing_api, http_event(name)).await;
        assert_eq!(status, 401, "{name}: {body}");
        let mut req = http_event(name);
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, bearer(dir.path(), &[scope]));
        let (status, body) = invoke_api(&billing_api, req).await;
        assert_eq!(status, expected, "{name}: {body}");
        match name {
            "billing-api-entitlements.json" => {
                assert_eq!(body["org_id"], "org_acme");
                assert_eq!(
                    (&body["tier"], &body["status"]),
                    (&"free".into(), &"none".into())
                );
            }
            _ => {
                assert_eq!(body["id"], "cs_test_sample_1");
                assert_eq!(
                    body["url"],
                    "https://checkout.stripe.com/c/pay/cs_test_sample_1"
                );
            }
        }
    }
    let sent = calls.lock().unwrap().clone();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent[0].starts_with("POST /v1/customers")
            && sent[0].contains("metadata%5Borg_id%5D=org_acme"),
        "{sent:?}"
    );
    assert!(
        sent[1].contains("price_team_sample") && sent[1].contains("mode=subscription"),
        "{sent:?}"
    );

    // The schedule's event: one pass over Stripe's (empty) list.
    let tick: serde_json::Value =
        serde_json::from_str(&event("billing-reconcile-schedule.json")).unwrap();
    assert!(
        tick.get("Records").is_none(),
        "a schedule tick, not an SQS batch"
    );
    let done = handle_billing_reconcile(app.billing.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(done["reconciled"], true, "{done}");
    assert_eq!(done["subscriptions_seen"], 0, "{done}");
    assert_eq!(
        calls.lock().unwrap().last().unwrap(),
        "GET /v1/subscriptions"
    );
}
