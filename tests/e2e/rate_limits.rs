//! Rate limits over HTTP against a local server wired as `hookline serve` is (billing,
//! outbound, repositories, licences and the per-org API limit on an injected clock): an org
//! gets its limit on every authenticated API route group with the `RateLimit-*` headers, then
//! 429 with `Retry-After` until its window ends, while another org keeps its whole limit; and
//! the webhook routes are never limited — a flood of badly signed deliveries (each a 401)
//! never refuses a well-signed one sent among them, even one carrying an exhausted org's token.

use hookline::api::ratelimit::Rate;
use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::clock::{Clock, ManualClock, SystemClock};
use hookline::model::Source;
use hookline::ports::store::{DeliveryQuery, DeliveryStore};
use hookline::providers::simulate::{self, Simulation};
use hookline::runtime::local::{
    embedded_app, with_api_rate_limit, with_billing, with_licenses, with_outbound,
    with_repositories, ApiRateLimitConfig, BillingConfig, LicensesConfig, OutboundConfig,
    RepositoriesConfig, Server, LOCAL_QUEUE,
};
use hookline_e2e::{dev_secrets, payload, GITHUB_SECRET, WAIT_LIMIT};
use reqwest::Method;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Limited {
    server: Server,
    store: Arc<dyn DeliveryStore>,
    issuer: LocalIssuer,
    /// The limit's clock: 15 s into a minute when the server starts.
    clock: Arc<ManualClock>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A server as `hookline serve` builds it, its API limited to `rate` per org.
async fn spawn(rate: Rate) -> Limited {
    let dir = tempfile::tempdir().unwrap();
    let system: Arc<dyn Clock> = Arc::new(SystemClock);
    let clock = Arc::new(ManualClock::at_unix(1_800_000_015));
    let no_env = |_: &str| -> Option<String> { None };
    let app = embedded_app(
        dir.path(),
        dev_secrets(),
        hookline::config::Settings::default(),
        LOCAL_QUEUE,
        hookline::ports::sqlite::Durability::Normal,
        system.clone(),
    )
    .unwrap();
    let app = with_billing(
        app,
        dir.path(),
        BillingConfig::from_lookup(&no_env).unwrap(),
        system.clone(),
    )
    .unwrap();
    let app = with_outbound(
        app,
        dir.path(),
        OutboundConfig::from_lookup(&no_env).unwrap(),
        system.clone(),
    )
    .unwrap();
    let repositories = RepositoriesConfig {
        github_api_url: "http://127.0.0.1:9".into(),
        gitlab_url: "http://127.0.0.1:9".into(),
        auth: None,
        rotation_overlap: Duration::from_secs(3600),
        oauth: None,
    };
    let app = with_repositories(
        app,
        dir.path(),
        "https://hooks.example.com",
        repositories,
        system.clone(),
    )
    .unwrap();
    let app = with_licenses(
        app,
        dir.path(),
        LicensesConfig::from_lookup(&no_env).unwrap(),
        system,
    )
    .unwrap();
    let app = with_api_rate_limit(
        app,
        dir.path(),
        ApiRateLimitConfig {
            rate: Some(rate),
            auth: None,
        },
        clock.clone(),
    )
    .unwrap();
    let store = app.store.clone();
    let server = Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
        .await
        .unwrap();
    Limited {
        server,
        store,
        issuer: LocalIssuer::open(dir.path()).unwrap(),
        clock,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        _dir: dir,
    }
}

/// A status, the three `RateLimit-*` headers and `Retry-After` (each `None` when absent), and
/// the body as JSON.
#[derive(Debug)]
struct Answer {
    status: u16,
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    retry_after: Option<u64>,
    body: serde_json::Value,
}

impl Limited {
    fn token(&self, org: &str) -> String {
        let scopes = [Scope::Admin, Scope::LicensesIssue].into_iter().collect();
        self.issuer.issue(
            &OrgId::from(org),
            &UserId::from("user-1"),
            &scopes,
            Duration::from_secs(600),
        )
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.server.url()));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let number = |name: &str| {
            res.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap())
        };
        let (limit, remaining, reset, retry_after) = (
            number("ratelimit-limit"),
            number("ratelimit-remaining"),
            number("ratelimit-reset"),
            number("retry-after"),
        );
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        Answer {
            status,
            limit,
            remaining,
            reset,
            retry_after,
            body: serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        }
    }

    async fn get(&self, path: &str, org: &str) -> Answer {
        self.call(Method::GET, path, Some(&self.token(org))).await
    }
}

#[tokio::test]
async fn an_org_gets_its_limit_on_every_api_route_then_429_and_another_org_is_not_slowed() {
    let app = spawn(Rate {
        limit: 6,
        window_secs: 60,
    })
    .await;
    // One route of each authenticated group, each answering as it would without a limit.
    let groups = [
        ("/api/v1/incidents", 200),
        ("/api/v1/repositories/connections", 200),
        ("/api/v1/endpoints", 200),
        ("/api/v1/org", 200),
        ("/api/v1/billing/entitlements/org-a", 200),
        ("/api/v1/events/evt_none", 404),
    ];
    for (n, (path, status)) in groups.into_iter().enumerate() {
        let a = app.get(path, "org-a").await;
        assert_eq!(a.status, status, "{path}: {:?}", a.body);
        assert_eq!(
            (a.limit, a.remaining, a.reset, a.retry_after),
            (Some(6), Some(5 - n as u64), Some(45), None),
            "{path}"
        );
    }
    for path in [
        "/api/v1/incidents",
        "/api/v1/oauth/github/authorize?format=json",
        "/api/v1/webhooks/deliveries",
    ] {
        let over = app.get(path, "org-a").await;
        assert_eq!(over.status, 429, "{path}: {:?}", over.body);
        assert_eq!(
            (over.limit, over.remaining, over.reset, over.retry_after),
            (Some(6), Some(0), Some(45), Some(45)),
            "{path}"
        );
        assert_eq!(over.body["error"], "rate_limited");
        assert!(
            over.body["message"]
                .as_str()
                .unwrap()
                .contains("6 requests per minute"),
            "{:?}",
            over.body
        );
    }

    let b = app.get("/api/v1/incidents", "org-b").await;
    assert_eq!(b.status, 200, "another org keeps its whole limit");
    assert_eq!((b.limit, b.remaining), (Some(6), Some(5)));

    // Not counted: no token (the route's 401), and the operator's licence route.
    let anonymous = app.call(Method::GET, "/api/v1/incidents", None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.limit, None);
    let licence = app.get("/api/v1/licenses", "org-a").await;
    assert_eq!(licence.status, 405, "{:?}", licence.body);
    assert_eq!(licence.limit, None);

    app.clock.advance(chrono::Duration::seconds(30));
    let later = app.get("/api/v1/incidents", "org-a").await;
    assert_eq!(later.status, 429);
    assert_eq!(later.retry_after, Some(15), "the same window, 30 s later");

    app.clock.advance(chrono::Duration::seconds(15));
    let next = app.get("/api/v1/incidents", "org-a").await;
    assert_eq!(next.status, 200, "a new window: {:?}", next.body);
    assert_eq!((next.remaining, next.reset), (Some(5), Some(60)));
    app.server.shutdown().await;
}

#[tokio::test]
async fn a_flood_of_badly_signed_deliveries_never_refuses_a_well_signed_one() {
    // An org allowed one API request a minute, which it has used.
    let app = Arc::new(
        spawn(Rate {
            limit: 1,
            window_secs: 60,
        })
        .await,
    );
    assert_eq!(app.get("/api/v1/incidents", "org-a").await.status, 200);
    assert_eq!(app.get("/api/v1/incidents", "org-a").await.status, 429);
    let token = app.token("org-a");

    const SENDERS: usize = 16;
    const BAD_PER_GOOD: usize = 50;
    const GOOD_PER_SENDER: usize = 3;
    let body = payload("github-push.json");
    let url = format!("{}{}", app.server.url(), Source::Github.route());
    let senders = (0..SENDERS).map(|sender| {
        let (app, body, url, token) = (app.clone(), body.clone(), url.clone(), token.clone());
        tokio::spawn(async move {
            let mut bad = Vec::new();
            let mut good = Vec::new();
            for round in 0..GOOD_PER_SENDER {
                for n in 0..=BAD_PER_GOOD {
                    let well_signed = n == BAD_PER_GOOD / 2;
                    let id = format!("flood-{sender}-{round}-{n}");
                    let signed = simulate::sign(&Simulation {
                        source: Source::Github,
                        secret: if well_signed {
                            GITHUB_SECRET
                        } else {
                            "not-the-secret"
                        },
                        url: Some(&url),
                        body: &body,
                        event: Some("push"),
                        now: chrono::Utc::now(),
                        delivery_id: Some(&id),
                    })
                    .unwrap();
                    // The exhausted org's bearer token rides along: webhooks never count it.
                    let mut req = app
                        .http
                        .post(&signed.url)
                        .bearer_auth(&token)
                        .body(signed.body.clone());
                    for (name, value) in &signed.headers {
                        req = req.header(name, value);
                    }
                    let started = Instant::now();
                    let res = req.send().await.unwrap();
                    let status = res.status().as_u16();
                    let limited = res.headers().contains_key("ratelimit-limit");
                    if well_signed {
                        good.push((id, status, limited, started.elapsed()));
                    } else {
                        bad.push((status, limited));
                    }
                }
            }
            (bad, good)
        })
    });
    let mut bad = Vec::new();
    let mut good = Vec::new();
    for done in futures::future::join_all(senders).await {
        let (b, g) = done.expect("a sender finished");
        bad.extend(b);
        good.extend(g);
    }
    assert_eq!(bad.len(), SENDERS * GOOD_PER_SENDER * BAD_PER_GOOD);
    assert!(
        bad.iter()
            .all(|&(status, limited)| status == 401 && !limited),
        "every badly signed delivery is a plain 401"
    );
    assert_eq!(good.len(), SENDERS * GOOD_PER_SENDER);
    for (id, status, limited, _) in &good {
        assert_eq!(*status, 202, "{id} was refused");
        assert!(
            !limited,
            "{id}: a webhook answer carries no rate-limit headers"
        );
    }
    let mut took: Vec<Duration> = good.iter().map(|g| g.3).collect();
    took.sort();
    println!(
        "{} well-signed deliveries among {} bad ones: median {:?}, slowest {:?}",
        good.len(),
        bad.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );

    // The Stripe route sits under /api/v1/billing/, beside the limited billing API: still a
    // webhook, never counted.
    let stripe_url = format!("{}{}", app.server.url(), Source::Stripe.route());
    let stripe_body = payload("stripe-invoice-paid.json");
    let signed = simulate::sign(&Simulation {
        source: Source::Stripe,
        secret: hookline_e2e::STRIPE_SECRET,
        url: Some(&stripe_url),
        body: &stripe_body,
        event: None,
        now: chrono::Utc::now(),
        delivery_id: None,
    })
    .unwrap();
    let mut req = app
        .http
        .post(&signed.url)
        .bearer_auth(&token)
        .body(signed.body.clone());
    for (name, value) in &signed.headers {
        req = req.header(name, value);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), 202);
    assert!(!res.headers().contains_key("ratelimit-limit"));
    let stripe_id = hookline_e2e::fixture(Source::Stripe).expected_delivery_id("");
    good.push((stripe_id, 202, false, Duration::ZERO));

    // Exactly the well-signed ones were recorded, and each is processed.
    let started = Instant::now();
    loop {
        let log = app
            .store
            .list(&DeliveryQuery {
                source: None,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut ids: Vec<&str> = log.iter().map(|d| d.delivery_id.as_str()).collect();
        ids.sort();
        let mut expected: Vec<&str> = good.iter().map(|g| g.0.as_str()).collect();
        expected.sort();
        assert_eq!(ids, expected, "nothing recorded for a bad signature");
        if log.iter().all(|d| d.status.is_final()) {
            break;
        }
        assert!(
            started.elapsed() < WAIT_LIMIT,
            "not every well-signed delivery was processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
