//! The API rate limit's DynamoDB counter against moto: the rate-limit conformance suite over
//! the real DynamoDB wire protocol, the item it leaves (one per org and window, with a TTL),
//! two API functions cold-started apart sharing one count, and a counter that fails or hangs
//! letting requests through.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test ratelimit_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test that needs moto fails, none skips.

use bytes::Bytes;
use hookline::api::ratelimit::{ApiRateLimit, Rate, Verdict};
use hookline::clock::SystemClock;
use hookline::ports::ratelimit::aws::{window_pk, DynamoRateLimiter};
use hookline::ports::ratelimit::{RateLimiter, Window};
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use hookline::runtime::lambda::{aws_api_with, Api, ApiHandler};
use http::StatusCode;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const HS256_SECRET: &str = "a-deployment-hs256-secret-of-enough-bytes";
const ISSUER: &str = "https://auth.example.com/";
const AUDIENCE: &str = "hookline-api";

async fn dynamo() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config_for(Some(&moto_endpoint())).await)
}

async fn fresh_table(client: &aws_sdk_dynamodb::Client) -> String {
    let table = format!("hookline-rate-{}", uuid::Uuid::new_v4());
    create_table(client, &table)
        .await
        .expect("create the test table in moto");
    table
}

async fn fresh() -> ((), Arc<dyn RateLimiter>) {
    let client = dynamo().await;
    let table = fresh_table(&client).await;
    ((), Arc::new(DynamoRateLimiter::new(client, table)))
}

hookline::ratelimit_conformance!(fresh());

#[tokio::test]
async fn a_window_is_one_item_that_expires_after_the_window_ends() {
    let client = dynamo().await;
    let table = fresh_table(&client).await;
    let limiter = DynamoRateLimiter::new(client.clone(), table.clone());
    let window = Window::containing(chrono::Utc::now(), 60);
    for _ in 0..3 {
        limiter.hit("acme#eu", window).await.unwrap();
    }
    let items = client.scan().table_name(&table).send().await.unwrap();
    assert_eq!(items.count(), 1, "one item per org and window");
    let item = &items.items()[0];
    let s = |name: &str| item[name].as_s().unwrap().clone();
    let n = |name: &str| item[name].as_n().unwrap().parse::<i64>().unwrap();
    assert_eq!(s("pk"), window_pk("acme#eu", window));
    assert_eq!(s("pk"), format!("RATE#acme%23eu#60#{}", window.start));
    assert_eq!(s("sk"), "RATE");
    assert_eq!(n("hits"), 3);
    let expires = n("expires_at");
    assert!(
        expires > window.end() && expires <= window.end() + 600,
        "the TTL sweeps the item soon after its window: expires_at {expires}, window end {}",
        window.end()
    );
}

// ---- the API functions, as they boot on Lambda ------------------------------------------------

fn token(org: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "org_id": org,
        "scope": "repos:read",
        "iat": now,
        "exp": now + 600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .expect("sign a test token")
}

/// What template.yaml gives an API function, with `rate` as `HOOKLINE_API_RATE_LIMIT`.
async fn api_env(rate: &str) -> (aws_config::SdkConfig, HashMap<String, String>) {
    let sdk = sdk_config_for(Some(&moto_endpoint())).await;
    let table = fresh_table(&aws_sdk_dynamodb::Client::new(&sdk)).await;
    let secret = aws_sdk_secretsmanager::Client::new(&sdk)
        .create_secret()
        .name(format!("hookline-rate-{}", uuid::Uuid::new_v4()))
        .secret_string(serde_json::json!({ "HOOKLINE_JWT_HS256_SECRET": HS256_SECRET }).to_string())
        .send()
        .await
        .expect("create the provider secret in moto");
    let env = HashMap::from([
        ("HOOKLINE_TABLE".to_owned(), table),
        (
            "HOOKLINE_SECRETS_ID".to_owned(),
            secret.arn().unwrap().to_owned(),
        ),
        (
            "HOOKLINE_KMS_KEY_ID".to_owned(),
            "arn:aws:kms:us-east-1:123456789012:key/unused".to_owned(),
        ),
        ("HOOKLINE_JWT_ISSUER".to_owned(), ISSUER.to_owned()),
        ("HOOKLINE_JWT_AUDIENCE".to_owned(), AUDIENCE.to_owned()),
        ("HOOKLINE_API_RATE_LIMIT".to_owned(), rate.to_owned()),
    ]);
    (sdk, env)
}

async fn cold_start(
    api: Api,
    sdk: &aws_config::SdkConfig,
    env: &HashMap<String, String>,
) -> Result<ApiHandler, String> {
    let env = env.clone();
    let lookup = move |name: &str| env.get(name).cloned();
    aws_api_with(api, sdk, &lookup)
        .await
        .map_err(|e| e.to_string())
}

async fn get(handler: &ApiHandler, org: &str) -> http::Response<Bytes> {
    let req = http::Request::builder()
        .method("GET")
        .uri("/api/v1/incidents")
        .header("authorization", format!("Bearer {}", token(org)))
        .body(Bytes::new())
        .unwrap();
    handler.handle(req).await
}

fn header<'a>(res: &'a http::Response<Bytes>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header on a {} answer", res.status()))
        .to_str()
        .unwrap()
}

/// Wait for the next hour when this one ends within a minute, so a test's requests all fall
/// into one window.
async fn away_from_an_hours_end() {
    let into = chrono::Utc::now().timestamp().rem_euclid(3600);
    if into > 3600 - 60 {
        tokio::time::sleep(Duration::from_secs((3600 - into + 1) as u64)).await;
    }
}

#[tokio::test]
async fn two_api_lambdas_count_into_one_limit_per_org() {
    let (sdk, env) = api_env("3/h").await;
    let first = cold_start(Api::Incidents, &sdk, &env).await.unwrap();
    let second = cold_start(Api::Incidents, &sdk, &env).await.unwrap();
    assert!(matches!(first, ApiHandler::RateLimited(..)));
    away_from_an_hours_end().await;
    for (n, lambda) in [&first, &second, &first].into_iter().enumerate() {
        let res = get(lambda, "org-a").await;
        assert_eq!(res.status(), StatusCode::OK, "{:?}", res.body());
        assert_eq!(header(&res, "ratelimit-limit"), "3");
        assert_eq!(header(&res, "ratelimit-remaining"), (2 - n).to_string());
        let reset: u64 = header(&res, "ratelimit-reset").parse().unwrap();
        assert!((61..=3600).contains(&reset), "{reset}");
    }
    let refused = get(&second, "org-a").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "ratelimit-remaining"), "0");
    assert_eq!(
        header(&refused, "retry-after"),
        header(&refused, "ratelimit-reset")
    );
    let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert!(matches!(
        get(&first, "org-a").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    ));

    let other = get(&second, "org-b").await;
    assert_eq!(other.status(), StatusCode::OK, "another org is not slowed");
    assert_eq!(header(&other, "ratelimit-remaining"), "2");

    let unauthenticated = http::Request::builder()
        .uri("/api/v1/incidents")
        .body(Bytes::new())
        .unwrap();
    let res = first.handle(unauthenticated).await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "no token: the route's own 401"
    );
    assert!(res.headers().get("ratelimit-limit").is_none());
}

#[tokio::test]
async fn off_leaves_the_api_unlimited_and_the_licence_api_is_never_limited() {
    let (sdk, env) = api_env("off").await;
    let handler = cold_start(Api::Incidents, &sdk, &env).await.unwrap();
    assert!(matches!(handler, ApiHandler::Incidents(_)));
    for _ in 0..5 {
        let res = get(&handler, "org-a").await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers().get("ratelimit-limit").is_none());
    }
    let (sdk, env) = api_env("1/h").await;
    let licences = cold_start(Api::Licenses, &sdk, &env).await.unwrap();
    assert!(matches!(licences, ApiHandler::Licenses(_)));
}

#[tokio::test]
async fn a_malformed_limit_stops_the_cold_start_naming_the_variable() {
    for rate in ["600", "lots/min", "10/fortnight", "0/min"] {
        let (sdk, env) = api_env(rate).await;
        let e = cold_start(Api::Endpoints, &sdk, &env)
            .await
            .err()
            .unwrap_or_else(|| panic!("{rate:?} was accepted"));
        assert!(
            e.contains("HOOKLINE_API_RATE_LIMIT") && e.contains(&format!("{rate:?}")),
            "{e}"
        );
    }
}

// ---- a counter that fails lets the API work ---------------------------------------------------

fn limit_over(counter: DynamoRateLimiter) -> ApiRateLimit {
    let auth = hookline::auth::Authenticator::new(hookline::auth::AuthConfig::new(
        ISSUER,
        AUDIENCE,
        hookline::auth::KeySource::Hs256(hookline::secret::Secret::new(HS256_SECRET.to_owned())),
    ))
    .unwrap();
    ApiRateLimit::new(
        Rate {
            limit: 1,
            window_secs: 3600,
        },
        auth,
        Arc::new(counter),
        Arc::new(SystemClock),
    )
}

fn bearer(org: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {}", token(org)).parse().unwrap(),
    );
    h
}

#[tokio::test]
async fn a_counter_whose_table_is_missing_lets_requests_through_uncounted() {
    let limit = limit_over(DynamoRateLimiter::new(
        dynamo().await,
        format!("no-such-table-{}", uuid::Uuid::new_v4()),
    ));
    for _ in 0..3 {
        assert_eq!(limit.check(&bearer("org-a")).await, Verdict::Uncounted);
    }
}

#[tokio::test]
async fn a_counter_that_never_answers_lets_requests_through_after_its_timeout() {
    // A socket that takes the connection and never says a word, as a stalled endpoint does.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let sdk = sdk_config_for(Some(&format!("http://{addr}"))).await;
    let limit = limit_over(DynamoRateLimiter::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        "hookline",
    ))
    .with_timeout(Duration::from_millis(300));
    assert_eq!(limit.check(&bearer("org-a")).await, Verdict::Uncounted);
    held.abort();
}
