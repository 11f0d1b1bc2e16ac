//! Billing test harness: a local Hookline wired as `hookline serve` wires it (billing, then
//! outbound, then repositories), its tiers from Stripe (localstripe behind the Checkout/Portal
//! stub), from an offline licence, or from nothing; and Stripe events signed as Stripe signs.

use super::stripe_stub::{
    localstripe_url, localstripe_webhook, LocalstripeWebhook, StripeStub, StubOptions,
    TEST_SECRET_KEY,
};
use super::{call_api, dev_secrets, STRIPE_SECRET, WAIT_LIMIT};
use hmac::{Hmac, Mac};
use hookline::auth::{LocalIssuer, OrgId, Scope, UserId};
use hookline::clock::{Clock, SystemClock};
use hookline::model::Source;
use hookline::ports::billing::embedded::EmbeddedBillingStore;
use hookline::ports::billing::BillingStore;
use hookline::ports::mail::embedded::{Outbox, Sent};
use hookline::ports::sqlite::{Database, Durability};
use hookline::ports::store::DeliveryQuery;
use hookline::runtime::local::{
    embedded_app, with_billing, with_outbound, with_repositories, BillingConfig, OutboundConfig,
    RepositoriesConfig, Server, LOCAL_QUEUE,
};
use hookline::runtime::App;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the server's tiers come from.
pub enum TierFrom {
    /// `STRIPE_SECRET_KEY` against the stub in front of localstripe.
    Stripe,
    /// `HOOKLINE_LICENSE` and `LICENSE_PUBLIC_KEY` (the key may be missing or another's).
    Licence {
        token: String,
        public_key: Option<String>,
    },
    /// Neither: local development.
    Unlimited,
}

/// How to start a billing server.
pub struct BillingOptions {
    pub tiers_from: TierFrom,
    /// `HOOKLINE_TIERS` (JSON), e.g. a small monthly event limit.
    pub tiers: Option<String>,
    /// Register Hookline's Stripe route as a localstripe webhook, so localstripe's own signed
    /// events reach it.
    pub localstripe_webhook: bool,
    /// The key the stub wants for Checkout and Portal (any when `None`): another key than
    /// Hookline's makes Stripe refuse with its 401.
    pub stub_api_key: Option<String>,
    /// The stub's Checkout knows only the team price (Stripe then refuses enterprise).
    pub stripe_lacks_enterprise_price: bool,
    /// `BILLING_RECONCILE_INTERVAL` (unset: `0`, so no test is reconciled behind its back).
    pub reconcile_interval: Option<String>,
}

impl Default for BillingOptions {
    fn default() -> Self {
        Self {
            tiers_from: TierFrom::Stripe,
            tiers: None,
            localstripe_webhook: false,
            stub_api_key: None,
            stripe_lacks_enterprise_price: false,
            reconcile_interval: None,
        }
    }
}

/// The team and enterprise prices: plans created in localstripe for this server alone.
#[derive(Debug, Clone)]
pub struct Prices {
    pub team: String,
    pub enterprise: String,
}

/// A running Hookline with billing on.
pub struct BillingServer {
    pub server: Server,
    pub app: App,
    pub issuer: LocalIssuer,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// `Some` on the Stripe source.
    pub stub: Option<StripeStub>,
    pub prices: Prices,
    pub hook: Option<LocalstripeWebhook>,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A raw call to localstripe, for what Hookline itself never does (plans, cards,
/// subscriptions): what a customer's Checkout would have made.
pub async fn localstripe(method: Method, path: &str, form: &[(&str, &str)]) -> Value {
    let res = reqwest::Client::new()
        .request(method, format!("{}{path}", localstripe_url()))
        .bearer_auth(TEST_SECRET_KEY)
        .form(form)
        .send()
        .await
        .unwrap_or_else(|e| panic!("localstripe {path}: {e}"));
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert!(status.is_success(), "localstripe {path}: {status} {body}");
    body
}

async fn create_plan(id: &str, amount: &str, name: &str) {
    localstripe(
        Method::POST,
        "/v1/plans",
        &[
            ("id", id),
            ("amount", amount),
            ("currency", "usd"),
            ("interval", "month"),
            ("product[name]", name),
        ],
    )
    .await;
}

/// Give a localstripe customer a test card (4242…), so its subscriptions are paid.
pub async fn add_card(customer: &str) {
    add_card_numbered(customer, "4242424242424242").await;
}

/// Give a localstripe customer one of Stripe's test cards (4000000000000341 attaches, then
/// declines every charge).
pub async fn add_card_numbered(customer: &str, number: &str) {
    let token = localstripe(
        Method::POST,
        "/v1/tokens",
        &[
            ("card[number]", number),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ],
    )
    .await;
    let path = format!("/v1/customers/{customer}/sources");
    localstripe(
        Method::POST,
        &path,
        &[("source", token["id"].as_str().unwrap())],
    )
    .await;
}

/// Subscribe a localstripe customer to `plan`; the subscription's id.
pub async fn subscribe(customer: &str, plan: &str) -> String {
    let sub = localstripe(
        Method::POST,
        "/v1/subscriptions",
        &[("customer", customer), ("items[0][plan]", plan)],
    )
    .await;
    sub["id"].as_str().unwrap().to_owned()
}

impl BillingServer {
    /// Billing from Stripe (localstripe behind the stub), the default tier table.
    pub async fn stripe() -> Self {
        Self::spawn(BillingOptions::default()).await
    }

    pub async fn spawn(options: BillingOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let prices = Prices {
            team: unique("price_team"),
            enterprise: unique("price_enterprise"),
        };
        let mut vars: HashMap<&str, String> = HashMap::new();
        // Reconciliation runs when a test calls it, never on its own.
        vars.insert("BILLING_RECONCILE_INTERVAL", "0".into());
        if let Some(tiers) = &options.tiers {
            vars.insert("HOOKLINE_TIERS", tiers.clone());
        }
        let stub = match &options.tiers_from {
            TierFrom::Stripe => {
                let base = localstripe_url();
                create_plan(&prices.team, "2900", "Hookline Team").await;
                create_plan(&prices.enterprise, "49900", "Hookline Enterprise").await;
                let stub = StripeStub::start(StubOptions {
                    prices: if options.stripe_lacks_enterprise_price {
                        vec![prices.team.clone()]
                    } else {
                        vec![prices.team.clone(), prices.enterprise.clone()]
                    },
                    api_key: options.stub_api_key.clone(),
                    forward_to: Some(base),
                })
                .await;
                vars.insert("STRIPE_SECRET_KEY", TEST_SECRET_KEY.into());
                vars.insert("STRIPE_API_BASE", stub.url.clone());
                vars.insert("STRIPE_PRICE_ID_TEAM", prices.team.clone());
                vars.insert("STRIPE_PRICE_ID_ENTERPRISE", prices.enterprise.clone());
                Some(stub)
            }
            TierFrom::Licence { token, public_key } => {
                vars.insert("HOOKLINE_LICENSE", token.clone());
                if let Some(key) = public_key {
                    vars.insert("LICENSE_PUBLIC_KEY", key.clone());
                }
                None
            }
            TierFrom::Unlimited => None,
        };
        vars.insert(
            "BILLING_RECONCILE_INTERVAL",
            options
                .reconcile_interval
                .clone()
                .unwrap_or_else(|| "0".into()),
        );
        let lookup = |name: &str| vars.get(name).cloned();

        let app = embedded_app(
            dir.path(),
            dev_secrets(),
            hookline::config::Settings::default(),
            LOCAL_QUEUE,
            Durability::Normal,
            clock.clone(),
        )
        .unwrap();
        // As `hookline serve` does: billing first, whose plans outbound and repositories ask.
        let billing = BillingConfig::from_lookup(&lookup).unwrap();
        let app = with_billing(app, dir.path(), billing, clock.clone()).unwrap();
        let outbound = OutboundConfig {
            settings: hookline::outbound::settings::OutboundSettings::default(),
            policy: super::outbound::local_development(),
            catalog: hookline::outbound::catalog::EventCatalog::default(),
            auth: None,
            jitter: Arc::new(|| 0.0),
            concurrency: 8,
        };
        let app = with_outbound(app, dir.path(), outbound, clock.clone()).unwrap();
        let repositories = RepositoriesConfig {
            // No test here installs a hook: connections are made with `setup_webhook: false`.
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
            clock,
        )
        .unwrap();
        let server = Server::start(app.clone(), "127.0.0.1:0".parse().unwrap(), 2)
            .await
            .unwrap();
        let hook = if options.localstripe_webhook {
            let url = format!("{}{}", server.url(), Source::Stripe.route());
            Some(localstripe_webhook(&localstripe_url(), &url, STRIPE_SECRET).await)
        } else {
            None
        };
        Self {
            issuer: LocalIssuer::open(dir.path()).unwrap(),
            http: reqwest::Client::new(),
            server,
            app,
            dir,
            stub,
            prices,
            hook,
        }
    }

    /// Stop localstripe sending here, then stop the server.
    pub async fn shutdown(self) {
        if let Some(hook) = &self.hook {
            hook.disable().await;
        }
        self.server.shutdown().await;
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn stub(&self) -> &StripeStub {
        self.stub.as_ref().expect("billing from Stripe")
    }

    /// A bearer token for `user-1` of `org` with `scopes`, valid ten minutes.
    pub fn token(&self, org: &str, scopes: &[Scope]) -> String {
        self.issuer.issue(
            &OrgId::from(org),
            &UserId::from("user-1"),
            &scopes.iter().copied().collect(),
            Duration::from_secs(600),
        )
    }

    /// A token of `org` with every scope an org's admin may hold.
    pub fn admin(&self, org: &str) -> String {
        self.token(
            org,
            &[
                Scope::Admin,
                Scope::BillingManage,
                Scope::ReposRead,
                Scope::ReposWrite,
                Scope::WebhooksManage,
                Scope::EventsWrite,
            ],
        )
    }

    /// Call an API route; the status and the JSON body (or the text as a JSON string).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call_api(&self.http, &self.url(), method, path, token, body).await
    }

    /// Give `org` an owner to mail (`PATCH /api/v1/org`).
    pub async fn set_owner(&self, org: &str, email: &str) {
        let (status, body) = self
            .call(
                Method::PATCH,
                "/api/v1/org",
                Some(&self.admin(org)),
                Some(json!({"name": format!("Org {org}"), "owner_email": email})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// `GET /api/v1/billing/entitlements/{org}` with a token of `org`; must answer 200.
    pub async fn entitlements(&self, org: &str) -> Value {
        let (status, body) = self
            .call(
                Method::GET,
                &format!("/api/v1/billing/entitlements/{org}"),
                Some(&self.token(org, &[])),
                None,
            )
            .await;
        assert_eq!(status, 200, "entitlements of {org}: {body}");
        body
    }

    /// Poll the org's entitlements until `check` accepts them; panics with the last seen.
    pub async fn wait_entitlements(&self, org: &str, what: &str, check: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let seen = self.entitlements(org).await;
            if check(&seen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited {WAIT_LIMIT:?} for {what}; entitlements of {org}: {seen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /api/v1/billing/checkout` for `tier` with `org`'s admin token.
    pub async fn checkout(&self, org: &str, tier: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            "/api/v1/billing/checkout",
            Some(&self.admin(org)),
            Some(json!({
                "tier": tier,
                "success_url": "https://app.example.com/billing/done?session={CHECKOUT_SESSION_ID}",
                "cancel_url": "https://app.example.com/billing",
            })),
        )
        .await
    }

    /// `POST /api/v1/billing/portal` with `org`'s admin token.
    pub async fn portal(&self, org: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            "/api/v1/billing/portal",
            Some(&self.admin(org)),
            Some(json!({"return_url": "https://app.example.com/settings"})),
        )
        .await
    }

    /// The org's Stripe customer, through a checkout (which creates it in localstripe).
    pub async fn customer_via_checkout(&self, org: &str) -> String {
        let (status, body) = self.checkout(org, "team").await;
        assert_eq!(status, 200, "{body}");
        self.account_store()
            .get_account(org)
            .await
            .unwrap()
            .and_then(|a| a.customer_id)
            .expect("checkout links a customer")
    }

    /// POST a Stripe event to Hookline's Stripe route, signed as Stripe signs it
    /// (`Stripe-Signature: t=…,v1=HMAC-SHA256(secret, "t.body")`); the answer.
    pub async fn post_event(&self, event: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(event).unwrap();
        let t = chrono::Utc::now().timestamp();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(STRIPE_SECRET.as_bytes()).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(&body);
        let signature = format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()));
        let res = self
            .http
            .post(format!("{}{}", self.url(), Source::Stripe.route()))
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Post a Stripe event, then wait until the worker has finished it.
    pub async fn deliver_event(&self, event: &Value) {
        let (status, body) = self.post_event(event).await;
        assert!(
            (200..300).contains(&status),
            "the Stripe route refused {}: {status} {body}",
            event["id"]
        );
        self.wait_processed(event["id"].as_str().unwrap()).await;
    }

    /// Wait until the worker has finished the Stripe delivery `event_id`.
    pub async fn wait_processed(&self, event_id: &str) {
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let log = self
                .app
                .store
                .list(&DeliveryQuery {
                    source: Some(Source::Stripe),
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap();
            let found = log.iter().find(|d| d.delivery_id == event_id);
            if found.is_some_and(|d| d.status.is_final()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not finish Stripe event {event_id} within {WAIT_LIMIT:?}: {:?}",
                found.map(|d| (d.status, d.error.clone()))
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The billing records in the data dir, read directly (invoices, refunds, parked events).
    pub fn account_store(&self) -> EmbeddedBillingStore {
        EmbeddedBillingStore::new(Database::open(self.dir.path(), Durability::Normal).unwrap())
    }

    /// Every mail in the data dir's outbox (`hookline outbox` lists the same), oldest first.
    pub fn outbox(&self) -> Vec<Sent> {
        Outbox::open(self.dir.path()).list().unwrap()
    }

    /// The mails sent to `to`.
    pub fn mails_to(&self, to: &str) -> Vec<Sent> {
        self.outbox()
            .into_iter()
            .filter(|m| m.mail.to == to)
            .collect()
    }

    /// Make the outbox unwritable: a plain file where its folder would be.
    pub fn break_outbox(&self) {
        let path = self
            .dir
            .path()
            .join(hookline::ports::mail::embedded::OUTBOX_DIR);
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        }
        std::fs::write(&path, "not a folder").unwrap();
    }
}

// ---- Stripe events as Stripe sends them ---------------------------------------------------------

/// A Stripe event of `event_type` about `object`, created at `created` (epoch seconds).
pub fn stripe_event(event_type: &str, created: i64, object: Value) -> Value {
    json!({
        "id": unique("evt"),
        "object": "event",
        "api_version": "2024-06-20",
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": object},
    })
}

/// What a subscription event says about the subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionState<'a> {
    pub id: &'a str,
    pub customer: &'a str,
    pub org: &'a str,
    pub price: &'a str,
    pub status: &'a str,
    pub current_period_end: i64,
    pub cancel_at_period_end: bool,
}

/// A subscription object as Stripe's API shows it (`metadata.org_id` set by Checkout).
pub fn subscription_object(s: &SubscriptionState<'_>) -> Value {
    json!({
        "id": s.id,
        "object": "subscription",
        "customer": s.customer,
        "status": s.status,
        "cancel_at_period_end": s.cancel_at_period_end,
        "current_period_start": s.current_period_end - 30 * 86_400,
        "current_period_end": s.current_period_end,
        "created": s.current_period_end - 30 * 86_400,
        "metadata": {"org_id": s.org},
        "items": {"object": "list", "data": [{
            "id": format!("si_{}", &s.id[4.min(s.id.len())..]),
            "object": "subscription_item",
            "price": {"id": s.price, "object": "price", "currency": "usd"},
            "quantity": 1,
        }]},
    })
}

/// An invoice object of the customer's subscription.
pub fn invoice_object(id: &str, customer: &str, status: &str, amount: i64, paid: bool) -> Value {
    json!({
        "id": id,
        "object": "invoice",
        "customer": customer,
        "subscription": "sub_of_invoice",
        "number": format!("HL-{}", id.trim_start_matches("in_")),
        "status": status,
        "currency": "usd",
        "amount_due": amount,
        "amount_paid": if paid { amount } else { 0 },
        "amount_remaining": if paid { 0 } else { amount },
        "hosted_invoice_url": format!("https://invoice.stripe.com/i/{id}"),
        "created": chrono::Utc::now().timestamp(),
    })
}

/// Now, in epoch seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A fresh org id.
pub fn org() -> String {
    unique("org")
}
