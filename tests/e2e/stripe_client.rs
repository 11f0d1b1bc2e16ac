//! Hookline's Stripe API client against localstripe (customers, subscriptions, errors, signed
//! webhooks) and against the local stub of Checkout and Customer Portal sessions, which
//! localstripe lacks.
//!
//! Run with `infra/with-localstripe.sh cargo test -p hookline-e2e --test stripe_client`:
//! without `HOOKLINE_LOCALSTRIPE_URL` the localstripe tests fail, they never skip.

use hookline::billing::stripe::{CheckoutRequest, StripeClient, StripeError, STRIPE_VERSION};
use hookline::providers::stripe as stripe_signature;
use hookline::secret::Secret;
use hookline_e2e::outbound::Receiver;
use hookline_e2e::stripe_stub::{
    localstripe_url, localstripe_webhook, localstripe_webhook_for, StripeStub, StubOptions,
    TEST_SECRET_KEY,
};
use hookline_e2e::WAIT_LIMIT;
use serde_json::Value;
use std::time::{Duration, Instant};

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn client(base: &str) -> StripeClient {
    StripeClient::new(base, Secret::new(TEST_SECRET_KEY))
}

/// A raw call to localstripe, for what Hookline itself never does (plans, cards,
/// subscriptions): the fixtures a customer's Checkout would have made.
async fn localstripe_post(path: &str, form: &[(&str, &str)]) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{}{path}", localstripe_url()))
        .bearer_auth(TEST_SECRET_KEY)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert!(status.is_success(), "localstripe {path}: {status} {body}");
    body
}

/// A customer of `org` with a test card on file, and a monthly plan of its own.
async fn paying_customer(org: &str) -> (String, String) {
    let stripe = client(&localstripe_url());
    let customer = stripe
        .create_customer(org, Some("owner@example.com"), None, &unique("idem"))
        .await
        .unwrap();
    let token = localstripe_post(
        "/v1/tokens",
        &[
            ("card[number]", "4242424242424242"),
            ("card[exp_month]", "12"),
            ("card[exp_year]", "2030"),
            ("card[cvc]", "123"),
        ],
    )
    .await;
    let path = format!("/v1/customers/{}/sources", customer.id);
    localstripe_post(&path, &[("source", token["id"].as_str().unwrap())]).await;
    let plan = unique("plan_team");
    localstripe_post(
        "/v1/plans",
        &[
            ("id", plan.as_str()),
            ("amount", "2900"),
            ("currency", "usd"),
            ("interval", "month"),
            ("product[name]", "Hookline Team"),
        ],
    )
    .await;
    (customer.id, plan)
}

async fn subscribe(customer: &str, plan: &str, org: &str) -> String {
    let sub = localstripe_post(
        "/v1/subscriptions",
        &[
            ("customer", customer),
            ("items[0][plan]", plan),
            ("metadata[org_id]", org),
        ],
    )
    .await;
    sub["id"].as_str().unwrap().to_string()
}

/// Every 4-character window of the key's secret part: none may appear in what we print.
fn key_fragments(key: &str) -> Vec<String> {
    let secret = key
        .trim_start_matches("sk_test_")
        .trim_start_matches("sk_live_");
    secret
        .as_bytes()
        .windows(4)
        .map(|w| String::from_utf8(w.to_vec()).unwrap())
        .collect()
}

#[track_caller]
fn assert_no_key(text: &str, key: &str) {
    for fragment in key_fragments(key) {
        assert!(
            !text.contains(&fragment),
            "{text:?} shows part of the key ({fragment:?})"
        );
    }
}

// ---- against localstripe ----

#[tokio::test]
async fn a_customer_is_created_with_its_org_in_the_metadata() {
    let stripe = client(&localstripe_url());
    let org = unique("org");
    let customer = stripe
        .create_customer(&org, Some("owner@acme.test"), Some("Acme"), &unique("idem"))
        .await
        .unwrap();
    assert!(customer.id.starts_with("cus_"), "{customer:?}");

    let read = stripe.get_customer(&customer.id).await.unwrap();
    assert_eq!(read["id"], customer.id.as_str());
    assert_eq!(read["metadata"]["org_id"], org.as_str());
    assert_eq!(read["email"], "owner@acme.test");
    assert_eq!(read["name"], "Acme");
}

#[tokio::test]
async fn subscriptions_are_listed_back_a_page_at_a_time() {
    let org = unique("org");
    let (customer, plan) = paying_customer(&org).await;
    let first = subscribe(&customer, &plan, &org).await;
    let second = subscribe(&customer, &plan, &org).await;
    let stripe = client(&localstripe_url());

    let page1 = stripe
        .list_subscriptions(Some(&customer), None, 1)
        .await
        .unwrap();
    assert_eq!(page1.data.len(), 1);
    assert!(page1.has_more, "two subscriptions, a page of one");
    let after = page1.data[0]["id"].as_str().unwrap();
    let page2 = stripe
        .list_subscriptions(Some(&customer), Some(after), 1)
        .await
        .unwrap();
    assert_eq!(page2.data.len(), 1);
    assert!(!page2.has_more);
    assert_ne!(page2.data[0]["id"], page1.data[0]["id"]);

    let all = stripe.subscriptions(Some(&customer), 1).await.unwrap();
    let mut ids: Vec<&str> = all.iter().map(|s| s["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![first.as_str(), second.as_str()];
    want.sort();
    assert_eq!(ids, want);
    for sub in &all {
        assert_eq!(sub["customer"], customer.as_str());
        assert_eq!(sub["status"], "active");
        assert_eq!(sub["metadata"]["org_id"], org.as_str());
        assert_eq!(sub["items"]["data"][0]["plan"]["id"], plan.as_str());
        assert!(sub["current_period_end"].as_i64().is_some(), "{sub}");
    }
}

#[tokio::test]
async fn a_cancelled_subscription_is_still_listed_for_reconciliation() {
    let org = unique("org");
    let (customer, plan) = paying_customer(&org).await;
    let sub = subscribe(&customer, &plan, &org).await;
    let res = reqwest::Client::new()
        .delete(format!("{}/v1/subscriptions/{sub}", localstripe_url()))
        .bearer_auth(TEST_SECRET_KEY)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    let all = client(&localstripe_url())
        .subscriptions(Some(&customer), 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "status=all keeps the cancelled one: {all:?}");
    assert_eq!(all[0]["status"], "canceled");
}

#[tokio::test]
async fn a_missing_customer_is_stripes_error_not_a_transport_failure() {
    let stripe = client(&localstripe_url());
    let err = stripe.get_customer("cus_doesnotexist").await.unwrap_err();
    match &err {
        StripeError::Api {
            status,
            kind,
            message,
            ..
        } => {
            assert_eq!(*status, 404);
            assert_eq!(kind, "invalid_request_error");
            assert_eq!(message, "Not Found", "localstripe's own message");
        }
        other => panic!("expected Stripe's error, got {other:?}"),
    }
    assert_no_key(&err.to_string(), TEST_SECRET_KEY);

    let err = stripe
        .list_subscriptions(Some("cus_doesnotexist"), None, 10)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StripeError::Api { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn localstripe_signs_its_webhooks_as_stripe_does() {
    let receiver = Receiver::answering(200).await;
    let secret = "whsec_localstripe_e2e_secret";
    let hook = localstripe_webhook_for(
        &localstripe_url(),
        &format!("{}/stripe", receiver.url),
        secret,
        Some(&["customer.created"]),
    )
    .await;

    let org = unique("org");
    let customer = client(&localstripe_url())
        .create_customer(&org, None, None, &unique("idem"))
        .await
        .unwrap();

    // localstripe's endpoints see the whole account's events: find this customer's.
    let deadline = Instant::now() + WAIT_LIMIT;
    let delivery = loop {
        let found = receiver.received().into_iter().find(|r| {
            let body = r.json();
            body["data"]["object"]["id"] == customer.id.as_str()
        });
        if let Some(found) = found {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "no customer.created for {} within {WAIT_LIMIT:?}; got {} deliveries",
            customer.id,
            receiver.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    hook.disable().await;

    let body = delivery.json();
    assert_eq!(body["type"], "customer.created");
    assert_eq!(body["data"]["object"]["metadata"]["org_id"], org.as_str());
    let header = delivery.header(stripe_signature::SIGNATURE_HEADER);
    let now = chrono::Utc::now();
    stripe_signature::verify(
        secret,
        &delivery.body,
        header,
        now,
        stripe_signature::TOLERANCE_SECS,
    )
    .unwrap_or_else(|e| panic!("localstripe's signature does not verify: {e:?} ({header:?})"));
    assert!(
        stripe_signature::verify(
            "whsec_another",
            &delivery.body,
            header,
            now,
            stripe_signature::TOLERANCE_SECS,
        )
        .is_err(),
        "another secret must not verify"
    );
}

#[tokio::test]
async fn a_disabled_localstripe_webhook_gets_nothing_more() {
    let receiver = Receiver::answering(200).await;
    let hook = localstripe_webhook(&localstripe_url(), &receiver.url, "whsec_off").await;
    hook.disable().await;
    let customer = client(&localstripe_url())
        .create_customer(&unique("org"), None, None, &unique("idem"))
        .await
        .unwrap();
    // localstripe waits a second before it sends; give it two.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mine = receiver
        .received()
        .into_iter()
        .filter(|r| r.json()["data"]["object"]["id"] == customer.id.as_str())
        .count();
    assert_eq!(mine, 0);
}

// ---- against the stub (Checkout and Portal) ----

async fn stub_with_key() -> StripeStub {
    StripeStub::start(StubOptions {
        prices: vec!["price_team".into(), "price_enterprise".into()],
        api_key: Some(TEST_SECRET_KEY.into()),
        forward_to: None,
    })
    .await
}

fn checkout_for(org: &str) -> CheckoutRequest<'_> {
    CheckoutRequest {
        customer_id: "cus_stubbed",
        price_id: "price_team",
        org_id: org,
        success_url: "https://app.example.com/billing/done?session={CHECKOUT_SESSION_ID}",
        cancel_url: "https://app.example.com/billing",
    }
}

#[tokio::test]
async fn a_checkout_session_is_created_with_the_fields_stripe_expects() {
    let stub = stub_with_key().await;
    let session = client(&stub.url)
        .create_checkout_session(checkout_for("org_acme"), "checkout-org_acme-1")
        .await
        .unwrap();
    assert!(session.id.starts_with("cs_test_"), "{session:?}");
    assert!(
        session.url.starts_with("https://checkout.stripe.com/"),
        "{session:?}"
    );

    let sent = stub.requests_to("/v1/checkout/sessions");
    assert_eq!(sent.len(), 1);
    let req = &sent[0];
    let fields: Vec<(&str, &str)> = req
        .form
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("mode", "subscription"),
            ("customer", "cus_stubbed"),
            ("line_items[0][price]", "price_team"),
            ("line_items[0][quantity]", "1"),
            (
                "success_url",
                "https://app.example.com/billing/done?session={CHECKOUT_SESSION_ID}"
            ),
            ("cancel_url", "https://app.example.com/billing"),
            ("client_reference_id", "org_acme"),
            ("metadata[org_id]", "org_acme"),
            ("subscription_data[metadata][org_id]", "org_acme"),
        ]
    );
    assert_eq!(req.idempotency_key.as_deref(), Some("checkout-org_acme-1"));
    assert_eq!(
        req.authorization.as_deref(),
        Some(format!("Bearer {TEST_SECRET_KEY}").as_str())
    );
    assert_eq!(req.stripe_version.as_deref(), Some(STRIPE_VERSION));
}

#[tokio::test]
async fn a_portal_session_is_created_for_the_customer() {
    let stub = stub_with_key().await;
    let session = client(&stub.url)
        .create_portal_session(
            "cus_stubbed",
            "https://app.example.com/settings",
            "portal-1",
        )
        .await
        .unwrap();
    assert!(session.id.starts_with("bps_"), "{session:?}");
    assert!(
        session.url.starts_with("https://billing.stripe.com/"),
        "{session:?}"
    );
    let sent = stub.requests_to("/v1/billing_portal/sessions");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].field("customer"), Some("cus_stubbed"));
    assert_eq!(
        sent[0].field("return_url"),
        Some("https://app.example.com/settings")
    );
    assert_eq!(sent[0].idempotency_key.as_deref(), Some("portal-1"));
}

#[tokio::test]
async fn an_unknown_price_comes_back_as_stripes_invalid_request_error() {
    let stub = stub_with_key().await;
    let mut req = checkout_for("org_acme");
    req.price_id = "price_x";
    let err = client(&stub.url)
        .create_checkout_session(req, "checkout-bad-price")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StripeError::Api {
            status: 400,
            kind: "invalid_request_error".into(),
            code: Some("resource_missing".into()),
            message: "No such price: 'price_x'".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "Stripe refused the request (HTTP 400, invalid_request_error, resource_missing): \
         No such price: 'price_x'"
    );
}

#[tokio::test]
async fn a_retried_create_with_the_same_key_gets_the_same_session() {
    let stub = stub_with_key().await;
    let stripe = client(&stub.url);
    let first = stripe
        .create_checkout_session(checkout_for("org_acme"), "checkout-retry")
        .await
        .unwrap();
    let again = stripe
        .create_checkout_session(checkout_for("org_acme"), "checkout-retry")
        .await
        .unwrap();
    assert_eq!(first, again);
    let other = stripe
        .create_checkout_session(checkout_for("org_acme"), "checkout-retry-2")
        .await
        .unwrap();
    assert_ne!(first.id, other.id);

    // The same key with other parameters is Stripe's idempotency_error.
    let err = stripe
        .create_checkout_session(checkout_for("org_other"), "checkout-retry")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StripeError::Api { status: 400, kind, .. } if kind == "idempotency_error"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_key_fails_without_showing_any_part_of_it() {
    let stub = stub_with_key().await;
    let wrong = "sk_test_wrongkey_Zq81xYvB7mNc2LpK";
    let stripe = StripeClient::new(&stub.url, Secret::new(wrong));
    let err = stripe
        .create_portal_session("cus_stubbed", "https://app.example.com", "portal-wrong-key")
        .await
        .unwrap_err();
    assert!(
        matches!(err, StripeError::Api { status: 401, .. }),
        "{err:?}"
    );
    // The stub echoes the key's tail as Stripe does; none of it may reach a log line.
    assert_no_key(&err.to_string(), wrong);
    assert_no_key(&format!("{err:?}"), wrong);
    assert_no_key(&format!("{stripe:?}"), wrong);

    // Nor through a transport failure.
    let unreachable = StripeClient::new("http://127.0.0.1:9", Secret::new(wrong));
    let err = unreachable.get_customer("cus_x").await.unwrap_err();
    assert!(matches!(err, StripeError::Transport(_)), "{err:?}");
    assert_no_key(&err.to_string(), wrong);
    assert_no_key(&format!("{err:?}"), wrong);
}

#[tokio::test]
async fn one_api_base_serves_localstripe_and_the_session_stub() {
    let stub = StripeStub::in_front_of(&localstripe_url(), &["price_team"]).await;
    let stripe = client(&stub.url);
    let org = unique("org");

    // Forwarded: the customer is localstripe's.
    let customer = stripe
        .create_customer(&org, Some("owner@example.com"), None, &unique("idem"))
        .await
        .unwrap();
    let read = client(&localstripe_url())
        .get_customer(&customer.id)
        .await
        .unwrap();
    assert_eq!(read["metadata"]["org_id"], org.as_str());

    // Answered by the stub, for a customer localstripe knows.
    let mut req = checkout_for(&org);
    req.customer_id = &customer.id;
    let session = stripe
        .create_checkout_session(req, &unique("idem"))
        .await
        .unwrap();
    assert!(session.id.starts_with("cs_test_"));
    let portal = stripe
        .create_portal_session(&customer.id, "https://app.example.com", &unique("idem"))
        .await
        .unwrap();
    assert!(portal.id.starts_with("bps_"));

    // A customer localstripe does not know is refused as Stripe refuses it.
    let err = stripe
        .create_portal_session("cus_unknown", "https://app.example.com", &unique("idem"))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StripeError::Api {
            status: 400,
            kind: "invalid_request_error".into(),
            code: Some("resource_missing".into()),
            message: "No such customer: 'cus_unknown'".into(),
        }
    );
    let paths: Vec<String> = stub.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/v1/customers".to_string()), "{paths:?}");
}
