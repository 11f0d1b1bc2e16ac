//! The API contract against a server wired as `hookline serve` is: the local router answers
//! exactly the routes `openapi.json` describes, each described operation is answered (with a
//! real record where its path names one), every other method on a described path is a 405,
//! and `GET /api/v1/openapi.json` serves the document without a token.

use hookline::api::openapi;
use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::billing::licence::LicenceKey;
use hookline::clock::{Clock, SystemClock};
use hookline::model::Source;
use hookline::runtime::local::{
    embedded_app, route_paths, with_billing, with_licenses, with_outbound, with_repositories,
    BillingConfig, LicensesConfig, OutboundConfig, RepositoriesConfig, Server, LOCAL_QUEUE,
};
use hookline::runtime::App;
use hookline_e2e::dev_secrets;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const ORG: &str = "org-contract";

/// A server with every route group `hookline serve` has, on a fresh data dir; nothing it
/// could call (GitHub, GitLab, Stripe) is configured or reachable.
async fn spawn() -> (tempfile::TempDir, App, Server) {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let app = embedded_app(
        dir.path(),
        dev_secrets(),
        hookline::config::Settings::default(),
        LOCAL_QUEUE,
        hookline::ports::sqlite::Durability::Normal,
        clock.clone(),
    )
    .unwrap();
    let none = |_: &str| None;
    let app = with_billing(
        app,
        dir.path(),
        BillingConfig::from_lookup(&none).unwrap(),
        clock.clone(),
    )
    .unwrap();
    let outbound = OutboundConfig {
        settings: hookline::outbound::settings::OutboundSettings::default(),
        policy: hookline_e2e::outbound::local_development(),
        catalog: hookline::outbound::catalog::EventCatalog::default(),
        auth: None,
        jitter: Arc::new(|| 0.0),
        concurrency: 4,
    };
    let app = with_outbound(app, dir.path(), outbound, clock.clone()).unwrap();
    let repositories = RepositoriesConfig {
        github_api_url: "http://127.0.0.1:9".into(),
        gitlab_url: "http://127.0.0.1:9".into(),
        auth: None,
        rotation_overlap: Duration::from_secs(60),
        oauth: None,
    };
    let app = with_repositories(
        app,
        dir.path(),
        "https://hooks.example.com",
        repositories,
        clock.clone(),
    )
    .unwrap();
    let licenses = LicensesConfig {
        key: Some(LicenceKey::generate()),
        tiers: Default::default(),
        auth: None,
    };
    let app = with_licenses(app, dir.path(), licenses, clock).unwrap();
    let server = Server::start(app.clone(), "127.0.0.1:0".parse().unwrap(), 1)
        .await
        .unwrap();
    (dir, app, server)
}

fn token(dir: &tempfile::TempDir) -> String {
    let scopes: BTreeSet<Scope> = Scope::ALL.into_iter().collect();
    LocalIssuer::open(dir.path()).unwrap().issue(
        &OrgId::new(ORG),
        &UserId::new("user-1"),
        &scopes,
        Duration::from_secs(600),
    )
}

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_local_router_answers_exactly_the_routes_the_document_describes() {
    let (_dir, app, server) = spawn().await;
    let served: BTreeSet<String> = route_paths(&app).into_iter().collect();
    let described: BTreeSet<String> = openapi::operations()
        .into_iter()
        .map(|op| op.path)
        .collect();
    let undocumented: Vec<&String> = served.difference(&described).collect();
    assert!(
        undocumented.is_empty(),
        "served but not in openapi.json: {undocumented:?}"
    );
    let unserved: Vec<&String> = described.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "described but no route group serves them: {unserved:?}"
    );
    for source in Source::ALL {
        assert!(served.contains(source.route()), "{source}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn every_described_operation_is_answered_and_every_other_method_is_a_405() {
    let (dir, _app, server) = spawn().await;
    let base = server.url();
    let token = token(&dir);
    let http = reqwest::Client::new();

    // Real records, so a route that names one is answered by its handler, not as unknown.
    let (status, endpoint) = call(
        &http,
        Method::POST,
        &format!("{base}/api/v1/endpoints"),
        &token,
        Some(json!({"url": "http://127.0.0.1:9/hook", "event_types": ["invoice.paid"], "enabled": false})),
    )
    .await;
    assert_eq!(status, 201, "{endpoint}");
    let endpoint_id = endpoint["id"].as_str().unwrap().to_owned();
    let (status, delivery) = call(
        &http,
        Method::PATCH,
        &format!("{base}/api/v1/endpoints/{endpoint_id}"),
        &token,
        Some(json!({"enabled": true})),
    )
    .await;
    assert_eq!(status, 200, "{delivery}");
    let (status, delivery) = call(
        &http,
        Method::POST,
        &format!("{base}/api/v1/endpoints/{endpoint_id}/test"),
        &token,
        None,
    )
    .await;
    assert_eq!(status, 202, "{delivery}");
    let delivery_id = delivery["id"].as_str().unwrap().to_owned();
    let (status, connection) = call(
        &http,
        Method::POST,
        &format!("{base}/api/v1/repositories/connect"),
        &token,
        Some(json!({"repository_full_name": "acme/contract", "setup_webhook": false})),
    )
    .await;
    assert_eq!(status, 201, "{connection}");
    let connection_id = connection["id"].as_str().unwrap().to_owned();
    let (status, event) = call(
        &http,
        Method::POST,
        &format!("{base}/api/v1/events"),
        &token,
        Some(json!({"type": "invoice.paid", "id": "evt_contract", "data": {}})),
    )
    .await;
    assert_eq!(status, 202, "{event}");

    let concrete = |path: &str| -> String {
        path.replace("{provider}", "github")
            .replace("{org_id}", ORG)
            // No inbound delivery or incident exists: these answer 404 from their handler.
            .replace(
                "/webhooks/deliveries/{id}",
                "/webhooks/deliveries/whd_bm9uZQ",
            )
            .replace("/incidents/{id}", "/incidents/inc_none")
            .replace("/endpoints/{id}", &format!("/endpoints/{endpoint_id}"))
            .replace("/deliveries/{id}", &format!("/deliveries/{delivery_id}"))
            .replace(
                "/connections/{id}",
                &format!("/connections/{connection_id}"),
            )
            .replace("/events/{id}", "/events/evt_contract")
    };
    let ops = openapi::operations();
    let paths: BTreeSet<&String> = ops.iter().map(|op| &op.path).collect();
    let mut checked = 0;
    for path in paths {
        let url = format!("{base}{}", concrete(path));
        assert!(!url.contains('{'), "no value for a parameter of {path}");
        let names_nothing =
            path.contains("/incidents/{id}") || path.contains("/webhooks/deliveries/{id}");
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            // Deleting the records would leave later paths nothing to name.
            if method == Method::DELETE {
                continue;
            }
            let described = ops
                .iter()
                .any(|op| &op.path == path && op.method == method.as_str());
            let (status, body) = call(&http, method.clone(), &url, &token, None).await;
            if described {
                assert_ne!(
                    status, 405,
                    "{method} {path} is described but not answered: {body}"
                );
                assert!(
                    !(status == 404 && body["message"] == "no such route"),
                    "{method} {path} is described but not routed"
                );
                if status == 404 {
                    assert!(
                        names_nothing,
                        "{method} {path}: 404 for a real record: {body}"
                    );
                }
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is answered but not described: {body}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked}");
    // DELETE last: where it is described it is answered, elsewhere it is a 405.
    for path in ops.iter().map(|op| &op.path).collect::<BTreeSet<_>>() {
        let described = ops
            .iter()
            .any(|op| &op.path == path && op.method == "DELETE");
        let (status, body) = call(
            &http,
            Method::DELETE,
            &format!("{base}{}", concrete(path)),
            &token,
            None,
        )
        .await;
        if described {
            assert_eq!(status, 200, "DELETE {path}: {body}");
        } else {
            assert_eq!(
                status, 405,
                "DELETE {path} is answered but not described: {body}"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn the_document_is_served_without_a_token() {
    let (_dir, _app, server) = spawn().await;
    let res = reqwest::get(format!("{}{}", server.url(), openapi::PATH))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let served: Value = res.json().await.unwrap();
    assert_eq!(served, openapi::document());
    server.shutdown().await;
}
