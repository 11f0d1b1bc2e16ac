//! `POST /api/v1/licenses` over real HTTP on the local server: the operator mints a licence
//! that verifies with the public key alone; an org's admin cannot; bad requests say which
//! field is wrong; without a signing key the route says it is not configured.

use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::billing::licence::{LicenceKey, LicenceVerifier};
use hookline::billing::tiers::TierTable;
use hookline::runtime::local::{embedded_app, with_licenses, LicensesConfig, Server};
use hookline_e2e::call_api;
use reqwest::Method;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

struct LicenceServer {
    server: Server,
    issuer: LocalIssuer,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl LicenceServer {
    async fn spawn(key: Option<LicenceKey>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(hookline::clock::SystemClock);
        let app = embedded_app(
            dir.path(),
            hookline_e2e::dev_secrets(),
            hookline::config::Settings::default(),
            hookline::runtime::local::LOCAL_QUEUE,
            hookline::ports::sqlite::Durability::Normal,
            clock.clone(),
        )
        .unwrap();
        let config = LicensesConfig {
            key,
            tiers: TierTable::default(),
            auth: None,
        };
        let app = with_licenses(app, dir.path(), config, clock).unwrap();
        let server = Server::start(app, "127.0.0.1:0".parse().unwrap(), 1)
            .await
            .unwrap();
        Self {
            server,
            issuer: LocalIssuer::open(dir.path()).unwrap(),
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn token(&self, scopes: &[Scope]) -> String {
        self.issuer.issue(
            &OrgId::from("org-customer"),
            &UserId::from("user-1"),
            &scopes.iter().copied().collect(),
            Duration::from_secs(600),
        )
    }

    async fn post(&self, token: Option<&str>, body: Value) -> (u16, Value) {
        call_api(
            &self.http,
            &self.server.url(),
            Method::POST,
            "/api/v1/licenses",
            token,
            Some(body),
        )
        .await
    }
}

#[tokio::test]
async fn the_operator_mints_a_licence_that_verifies_with_the_public_key_alone() {
    let key = LicenceKey::generate();
    let app = LicenceServer::spawn(Some(key.clone())).await;
    let operator = app.token(&[Scope::LicensesIssue]);
    let (status, body) = app
        .post(
            Some(&operator),
            json!({"org_id": "org-globex", "tier": "enterprise", "seats": 50,
                   "expires_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let verifier = LicenceVerifier::from_base64(&key.public_key_base64()).unwrap();
    let claims = verifier
        .verify(body["licence"].as_str().unwrap(), chrono::Utc::now())
        .unwrap();
    assert_eq!(serde_json::to_value(&claims).unwrap(), body["claims"]);
    assert_eq!(claims.sub, "org-globex");
    assert_eq!(claims.seats, 50);
    assert_eq!(
        claims.features,
        TierTable::default().enterprise.features,
        "the licence grants its tier's features"
    );
    assert_eq!(body["claims"]["exp"], 4_070_908_800_i64);

    // Defaults: team, ten seats, a year.
    let (status, body) = app
        .post(Some(&operator), json!({"org_id": "org-initech"}))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["claims"]["tier"], "team");
    assert_eq!(body["claims"]["seats"], 10);
    let lasts = body["claims"]["exp"].as_i64().unwrap() - body["claims"]["iat"].as_i64().unwrap();
    assert_eq!(lasts, 365 * 86_400);
    app.server.shutdown().await;
}

#[tokio::test]
async fn an_org_admin_cannot_mint_a_licence() {
    let app = LicenceServer::spawn(Some(LicenceKey::generate())).await;
    let every_customer_scope: Vec<Scope> = Scope::ALL
        .into_iter()
        .filter(|s| *s != Scope::LicensesIssue)
        .collect();
    for scopes in [vec![Scope::Admin], every_customer_scope] {
        let (status, body) = app
            .post(
                Some(&app.token(&scopes)),
                json!({"org_id": "org-customer", "tier": "enterprise"}),
            )
            .await;
        assert_eq!(status, 403, "{scopes:?}: {body}");
        assert_eq!(body["error"], "forbidden");
        assert!(
            body["message"].as_str().unwrap().contains("licenses:issue"),
            "{body}"
        );
    }
    let (status, _) = app.post(None, json!({"org_id": "org-customer"})).await;
    assert_eq!(status, 401);
    app.server.shutdown().await;
}

#[tokio::test]
async fn a_bad_request_answers_422_naming_the_field() {
    let app = LicenceServer::spawn(Some(LicenceKey::generate())).await;
    let operator = app.token(&[Scope::LicensesIssue]);
    for (body, field) in [
        (json!({"tier": "team"}), "org_id"),
        (
            json!({"org_id": "o", "expires_at": "2020-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"org_id": "o", "tier": "platinum"}), "tier"),
        (json!({"org_id": "o", "seats": 0}), "seats"),
    ] {
        let (status, problem) = app.post(Some(&operator), body.clone()).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert_eq!(problem["error"], "invalid_request");
        let message = problem["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{body}: {message}");
    }
    app.server.shutdown().await;
}

#[tokio::test]
async fn without_a_signing_key_the_route_answers_503_saying_so() {
    let app = LicenceServer::spawn(None).await;
    let (status, problem) = app
        .post(
            Some(&app.token(&[Scope::LicensesIssue])),
            json!({"org_id": "org-globex"}),
        )
        .await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["error"], "not_configured");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("LICENSE_PRIVATE_KEY"),
        "{problem}"
    );
    app.server.shutdown().await;
}

#[test]
fn the_local_configuration_names_a_bad_key_without_echoing_it() {
    let key = LicenceKey::generate();
    let seed = key.to_base64().to_string();
    let lookup = |name: &str| match name {
        "LICENSE_PRIVATE_KEY" => Some(seed.clone()),
        "LICENSE_ISSUER" => Some("acme-ops".to_owned()),
        _ => None,
    };
    let config = LicensesConfig::from_lookup(&lookup).unwrap();
    assert_eq!(config.key.unwrap().issuer(), "acme-ops");
    assert!(LicensesConfig::from_lookup(&|_: &str| None)
        .unwrap()
        .key
        .is_none());

    let bad = "c2VjcmV0LWJ1dC1ub3QtYS1rZXk";
    let err = LicensesConfig::from_lookup(&|name: &str| {
        (name == "LICENSE_PRIVATE_KEY").then(|| bad.to_owned())
    })
    .err()
    .unwrap();
    assert!(err.starts_with("LICENSE_PRIVATE_KEY: "), "{err}");
    assert!(!err.contains(bad), "{err}");
}
