//! `hookline billing reconcile` as an operator runs it against a data dir: Stripe's
//! subscription list (a loopback stub answering as Stripe's API does) repairs what a missed
//! webhook left, a second run finds nothing, and a missing or refused key exits 1.

use hookline::billing::tiers::Tier;
use hookline::ports::billing::embedded::EmbeddedBillingStore;
use hookline::ports::billing::BillingStore;
use hookline::ports::sqlite::{Database, Durability};
use std::path::Path;
use std::process::{Command, Output};

const HOOKLINE: &str = env!("CARGO_BIN_EXE_hookline");
const KEY: &str = "sk_test_cli_reconcile_0123456789";

/// `hookline billing reconcile ARGS` over `dir`, with no billing settings from the developer's
/// own environment and none from an env file but `env_file`.
fn reconcile(dir: &Path, env_file: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(HOOKLINE);
    cmd.args(["billing", "reconcile", "--data-dir"])
        .arg(dir)
        .arg("--env-file")
        .arg(env_file.map_or_else(|| dir.join("no.env"), Path::to_path_buf))
        .args(args);
    for name in [
        "STRIPE_SECRET_KEY",
        "STRIPE_API_BASE",
        "STRIPE_PRICE_ID_TEAM",
        "STRIPE_PRICE_ID_ENTERPRISE",
        "HOOKLINE_LICENSE",
        "LICENSE_PUBLIC_KEY",
        "HOOKLINE_TIERS",
        "HOOKLINE_TIERS_FILE",
        "BILLING_RECONCILE_INTERVAL",
    ] {
        cmd.env_remove(name);
    }
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run hookline"))
        .await
        .unwrap()
}

/// Stripe's `GET /v1/subscriptions`: one active team subscription whose customer Hookline's
/// Checkout tagged with org_acme; another key gets Stripe's error shape.
async fn stripe() -> String {
    use axum::http::{HeaderMap, StatusCode};
    // Fixed once: a period end that moved with each request would be drift to repair.
    let now = chrono::Utc::now().timestamp();
    let answer = move |headers: HeaderMap| async move {
        let json = |status, v: serde_json::Value| {
            (
                status,
                [("content-type", "application/json")],
                v.to_string(),
            )
        };
        if headers.get("authorization").and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {KEY}"))
        {
            return json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": {"type": "invalid_request_error",
                    "message": "Invalid API Key provided: sk_test_****"}}),
            );
        }
        json(
            StatusCode::OK,
            serde_json::json!({
                "object": "list",
                "has_more": false,
                "data": [{
                    "id": "sub_cli_1",
                    "object": "subscription",
                    "customer": "cus_cli_1",
                    "status": "active",
                    "created": now - 60,
                    "current_period_end": now + 30 * 86_400,
                    "cancel_at_period_end": false,
                    "metadata": {"org_id": "org_acme"},
                    "items": {"object": "list", "data": [{"price": {"id": "price_team_cli"}}]},
                }],
            }),
        )
    };
    let app = axum::Router::new().route("/v1/subscriptions", axum::routing::get(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_a_missed_subscription_once_and_says_what_it_did() {
    let dir = tempfile::tempdir().unwrap();
    let base = stripe().await;
    // The key in the env file, as `serve` reads it; the rest in the environment.
    let env_file = dir.path().join(".env");
    std::fs::write(&env_file, format!("STRIPE_SECRET_KEY={KEY}\n")).unwrap();
    let with_stripe = |args: &[&str]| {
        let mut cmd = reconcile(dir.path(), Some(&env_file), args);
        cmd.env("STRIPE_API_BASE", &base)
            .env("STRIPE_PRICE_ID_TEAM", "price_team_cli");
        cmd
    };

    let out = run(with_stripe(&[])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("every org")
            && stdout.contains("1 subscription(s) seen, 1 repaired, 0 parked event(s) applied, 0 unknown customer(s)"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY) && !text(&out.stderr).contains(KEY));

    // The data dir now has the org's subscription, on the team tier.
    let store = EmbeddedBillingStore::new(Database::open(dir.path(), Durability::Normal).unwrap());
    let account = store.get_account("org_acme").await.unwrap().unwrap();
    assert_eq!(account.customer_id.as_deref(), Some("cus_cli_1"));
    let sub = account.subscription.unwrap();
    assert_eq!((sub.id.as_str(), sub.tier), ("sub_cli_1", Tier::Team));

    // Nothing drifted since: nothing repaired.
    let out = run(with_stripe(&["--org", "org_acme"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("org org_acme") && stdout.contains("1 subscription(s) seen, 0 repaired"),
        "{stdout}"
    );

    // An org without a Stripe customer has nothing to reconcile, and that is not an error.
    let out = run(with_stripe(&["--org", "org_initech"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 subscription(s) seen"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_stripe_key_reconcile_says_billing_is_not_configured_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(reconcile(dir.path(), None, &[])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("billing is not configured") && stderr.contains("STRIPE_SECRET_KEY"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stripe_refuses_exits_1_with_stripes_message_and_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = stripe().await;
    let wrong = "sk_test_wrong_key_9876543210";
    let mut cmd = reconcile(dir.path(), None, &[]);
    cmd.env("STRIPE_SECRET_KEY", wrong)
        .env("STRIPE_API_BASE", &base);
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Invalid API Key provided"), "{stderr}");
    assert!(!stderr.contains(wrong) && !text(&out.stdout).contains(wrong));
}
