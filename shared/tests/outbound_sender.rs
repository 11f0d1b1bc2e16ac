//! The outbound sender over real HTTP: a receiver on 127.0.0.1 answering each way a customer's
//! endpoint can (success, failure, redirect, slowness, back-pressure, an endless body), and the
//! SSRF policy deciding where the socket may open.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hookline::outbound::sender::{SendOutcome, Sender, USER_AGENT};
use hookline::outbound::signing;
use hookline::outbound::ssrf::{AddressPolicy, Lookup};

/// What the receiver saw: path, headers and body of each request.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>;

struct Receiver {
    addr: SocketAddr,
    seen: Seen,
}

impl Receiver {
    async fn start() -> Self {
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push((uri.path().to_owned(), headers, body));
                answer(uri.path()).await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, _)| p == path)
            .count()
    }

    fn total_hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// How the receiver answers each path.
async fn answer(path: &str) -> Response {
    match path {
        "/ok" => (StatusCode::OK, "y".repeat(3000)).into_response(),
        "/accepted" => StatusCode::ACCEPTED.into_response(),
        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "/redirect" => (StatusCode::FOUND, [("location", "/ok")]).into_response(),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            StatusCode::OK.into_response()
        }
        "/busy" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7")],
            "slow down",
        )
            .into_response(),
        "/endless" => {
            let chunk = Bytes::from(vec![b'z'; 16 * 1024]);
            let stream = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
            Response::new(Body::from_stream(stream))
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// http allowed and loopback opened, as for local development.
fn dev_policy() -> AddressPolicy {
    AddressPolicy::strict()
        .allow_http(true)
        .allow_cidrs(["127.0.0.0/8".parse().unwrap()])
}

fn sender(policy: AddressPolicy) -> Sender {
    Sender::new(policy, Duration::from_secs(5))
}

const BODY: &str =
    r#"{"id":"evt_1","type":"invoice.paid","created_at":"2026-12-02T00:00:00Z","data":{}}"#;

async fn post(sender: &Sender, url: &str) -> SendOutcome {
    sender
        .post(url, Vec::new(), Bytes::from_static(BODY.as_bytes()))
        .await
}

#[tokio::test]
async fn a_2xx_is_delivered_with_the_signed_body_and_the_response_head_recorded() {
    let receiver = Receiver::start().await;
    let secret = signing::generate_secret();
    let ts = chrono::Utc::now().timestamp();
    let headers = signing::sign(BODY.as_bytes(), "dlv_1", ts, &[&secret], "X-Signature");
    let outcome = sender(dev_policy())
        .post(
            &receiver.url("/ok"),
            headers,
            Bytes::from_static(BODY.as_bytes()),
        )
        .await;

    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.error, None);
    assert!(!outcome.refused);
    assert_eq!(
        outcome.response_body.as_deref(),
        Some("y".repeat(1024).as_str())
    );

    let seen = receiver.seen.lock().unwrap();
    let (_, headers, body) = &seen[0];
    assert_eq!(body.as_ref(), BODY.as_bytes());
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["user-agent"], USER_AGENT);
    assert_eq!(headers["webhook-id"], "dlv_1");
    standardwebhooks::Webhook::new(secret.expose())
        .unwrap()
        .verify(body, headers)
        .expect("the official library verifies what arrived");
    assert!(headers["x-signature"]
        .to_str()
        .unwrap()
        .starts_with("sha256="));
}

#[tokio::test]
async fn an_empty_2xx_is_a_success_without_a_recorded_body() {
    let receiver = Receiver::start().await;
    let outcome = post(&sender(dev_policy()), &receiver.url("/accepted")).await;
    assert!(outcome.succeeded());
    assert_eq!(outcome.status, Some(202));
    assert_eq!(outcome.response_body, None);
}

#[tokio::test]
async fn a_500_is_a_failure_with_its_status_and_body() {
    let receiver = Receiver::start().await;
    let outcome = post(&sender(dev_policy()), &receiver.url("/fail")).await;
    assert!(!outcome.succeeded());
    assert_eq!(outcome.status, Some(500));
    assert_eq!(outcome.error.as_deref(), Some("HTTP 500"));
    assert_eq!(outcome.response_body.as_deref(), Some("boom"));
    assert_eq!(outcome.retry_after, None);
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_counts_as_a_failure() {
    let receiver = Receiver::start().await;
    let outcome = post(&sender(dev_policy()), &receiver.url("/redirect")).await;
    assert!(!outcome.succeeded());
    assert_eq!(outcome.status, Some(302));
    assert_eq!(
        outcome.error.as_deref(),
        Some("redirect (302) not followed")
    );
    assert_eq!(receiver.hits("/ok"), 0, "the Location was never fetched");
}

#[tokio::test]
async fn a_receiver_slower_than_the_timeout_is_a_timeout() {
    let receiver = Receiver::start().await;
    let sender = Sender::new(dev_policy(), Duration::from_millis(300));
    let outcome = post(&sender, &receiver.url("/slow")).await;
    assert_eq!(outcome.status, None);
    assert_eq!(outcome.error.as_deref(), Some("timed out after 300ms"));
    assert!(
        (300..2000).contains(&outcome.duration_ms),
        "{} ms",
        outcome.duration_ms
    );
    assert!(!outcome.refused);
}

#[tokio::test]
async fn a_429_with_retry_after_reports_when_to_come_back() {
    let receiver = Receiver::start().await;
    let outcome = post(&sender(dev_policy()), &receiver.url("/busy")).await;
    assert!(!outcome.succeeded());
    assert_eq!(outcome.status, Some(429));
    assert_eq!(outcome.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(outcome.error.as_deref(), Some("HTTP 429"));
}

#[tokio::test]
async fn an_endless_response_body_is_cut_off_rather_than_read_to_the_end() {
    let receiver = Receiver::start().await;
    let outcome = tokio::time::timeout(
        Duration::from_secs(4),
        post(&sender(dev_policy()), &receiver.url("/endless")),
    )
    .await
    .expect("the sender stops reading");
    assert!(outcome.succeeded(), "{outcome:?}");
    assert_eq!(outcome.response_body.map(|b| b.len()), Some(1024));
}

#[tokio::test]
async fn a_closed_port_is_connection_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let outcome = post(&sender(dev_policy()), &format!("http://127.0.0.1:{port}/")).await;
    assert_eq!(outcome.status, None);
    assert_eq!(outcome.error.as_deref(), Some("connection refused"));
    assert!(!outcome.refused);
}

#[tokio::test]
async fn localhost_without_the_allow_list_is_refused_and_the_receiver_never_hears_of_it() {
    let receiver = Receiver::start().await;
    let strict = sender(AddressPolicy::strict().allow_http(true));
    let by_name = post(
        &strict,
        &format!("http://localhost:{}/ok", receiver.addr.port()),
    )
    .await;
    assert!(by_name.refused);
    assert_eq!(by_name.status, None);
    let error = by_name.error.unwrap();
    assert!(
        error.starts_with("refused: localhost resolves to ") && error.contains("loopback"),
        "{error}"
    );

    let by_address = post(&strict, &receiver.url("/ok")).await;
    assert!(by_address.refused);
    assert_eq!(
        by_address.error.as_deref(),
        Some("refused: 127.0.0.1 is a loopback address (127.0.0.0/8)")
    );
    assert_eq!(receiver.total_hits(), 0);

    // The same receiver, allow-listed, is reached by name.
    let by_name = post(
        &sender(dev_policy()),
        &format!("http://localhost:{}/ok", receiver.addr.port()),
    )
    .await;
    assert!(by_name.succeeded(), "{by_name:?}");
}

#[tokio::test]
async fn https_only_unless_http_is_allowed() {
    let receiver = Receiver::start().await;
    let policy = AddressPolicy::strict().allow_cidrs(["127.0.0.0/8".parse().unwrap()]);
    let outcome = post(&sender(policy), &receiver.url("/ok")).await;
    assert!(outcome.refused);
    assert!(outcome.error.unwrap().contains("only https"));
    assert_eq!(receiver.total_hits(), 0);
}

/// A DNS that answers fixed addresses for made-up names, the way an attacker's DNS would.
struct FakeDns(HashMap<&'static str, Vec<IpAddr>>);

#[async_trait::async_trait]
impl Lookup for FakeDns {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        let ips = self
            .0
            .get(host)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such name"))?;
        Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
    }
}

fn fake_dns() -> Arc<FakeDns> {
    Arc::new(FakeDns(HashMap::from([
        ("hooks.customer.test", vec!["127.0.0.1".parse().unwrap()]),
        (
            "metadata.attacker.test",
            vec!["169.254.169.254".parse().unwrap()],
        ),
        (
            "mixed.attacker.test",
            vec!["127.0.0.1".parse().unwrap(), "10.0.0.9".parse().unwrap()],
        ),
    ])))
}

#[tokio::test]
async fn the_connection_goes_to_the_address_the_policy_checked() {
    let receiver = Receiver::start().await;
    let port = receiver.addr.port();
    // Even a policy that opens everything never connects to the metadata address.
    let open = AddressPolicy::strict()
        .allow_http(true)
        .allow_cidrs(["0.0.0.0/0".parse().unwrap()])
        .with_lookup(fake_dns());
    let sender = sender(open);

    // No real DNS knows this name: reaching the receiver proves the socket opened to the
    // address the policy's lookup returned and checked.
    let reached = post(&sender, &format!("http://hooks.customer.test:{port}/ok")).await;
    assert!(reached.succeeded(), "{reached:?}");
    let seen = receiver.seen.lock().unwrap()[0].1.clone();
    assert_eq!(seen["host"], format!("hooks.customer.test:{port}").as_str());

    let metadata = post(&sender, &format!("http://metadata.attacker.test:{port}/ok")).await;
    assert!(metadata.refused);
    assert_eq!(
        metadata.error.as_deref(),
        Some(
            "refused: metadata.attacker.test resolves to 169.254.169.254, a cloud metadata \
             address (169.254.169.254/32)"
        )
    );
    assert_eq!(receiver.total_hits(), 1);
}

#[tokio::test]
async fn a_name_with_one_forbidden_address_among_allowed_ones_is_refused_whole() {
    let receiver = Receiver::start().await;
    let sender = sender(dev_policy().with_lookup(fake_dns()));
    let outcome = post(
        &sender,
        &format!("http://mixed.attacker.test:{}/ok", receiver.addr.port()),
    )
    .await;
    assert!(outcome.refused);
    assert!(outcome
        .error
        .unwrap()
        .contains("10.0.0.9, a private address"));
    assert_eq!(receiver.total_hits(), 0);
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_a_failure_to_retry_not_a_refusal() {
    let sender = sender(dev_policy().with_lookup(fake_dns()));
    let outcome = post(&sender, "http://gone.customer.test/hook").await;
    assert!(!outcome.refused);
    assert_eq!(outcome.status, None);
    assert_eq!(
        outcome.error.as_deref(),
        Some("cannot resolve gone.customer.test (entity not found)")
    );
}
