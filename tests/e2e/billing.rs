//! Billing end to end, over real HTTP on the local server: Stripe's signed events (localstripe's
//! own, and events signed here exactly as Stripe signs them) keep each org's subscription;
//! Checkout and the Portal go through the stub in front of localstripe; entitlements follow
//! every tier, status and source; limits answer 402 and create nothing; reconciliation repairs
//! what a missed webhook left.
//!
//! Run with `infra/with-localstripe.sh cargo test -p hookline-e2e --test billing`: without
//! `HOOKLINE_LOCALSTRIPE_URL` the tests fail, they never skip.

use hookline::auth::Scope;
use hookline::billing::licence::{LicenceKey, LicenceRequest};
use hookline::billing::tiers::{Tier, TierTable};
use hookline::ports::billing::BillingStore;
use hookline_e2e::billing::{
    add_card, add_card_numbered, invoice_object, localstripe, now, org, stripe_event, subscribe,
    subscription_object, BillingOptions, BillingServer, SubscriptionState, TierFrom,
};
use hookline_e2e::stripe_stub::TEST_SECRET_KEY;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

const DAY: i64 = 86_400;

fn sub<'a>(id: &'a str, customer: &'a str, org: &'a str, price: &'a str) -> SubscriptionState<'a> {
    SubscriptionState {
        id,
        customer,
        org,
        price,
        status: "active",
        current_period_end: now() + 30 * DAY,
        cancel_at_period_end: false,
    }
}

fn subjects(app: &BillingServer, to: &str) -> Vec<String> {
    app.mails_to(to)
        .into_iter()
        .map(|m| m.mail.subject)
        .collect()
}

// ---- localstripe's own webhooks ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localstripes_signed_webhooks_move_the_org_onto_the_plan_it_subscribed_to() {
    let app = BillingServer::spawn(BillingOptions {
        localstripe_webhook: true,
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    app.set_owner(&org, "owner@acme.test").await;
    assert_eq!(app.entitlements(&org).await["tier"], "free");

    // Checkout creates the customer in localstripe (through the stub); the customer then
    // subscribes, as Checkout would have made it, to the team price.
    let customer = app.customer_via_checkout(&org).await;
    add_card(&customer).await;
    let sub_id = subscribe(&customer, &app.prices.team).await;

    app.wait_entitlements(&org, "the team plan", |e| {
        e["tier"] == "team" && e["status"] == "active"
    })
    .await;
    let e = app.entitlements(&org).await;
    assert_eq!(e["source"], "stripe");
    assert_eq!(e["limits"], json!(TierTable::default().team.limits));
    assert!(e["current_period_end"].is_string(), "{e}");
    let kept = app
        .account_store()
        .get_account(&org)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.customer_id.as_deref(), Some(customer.as_str()));
    assert_eq!(kept.subscription.unwrap().id, sub_id);

    // localstripe's invoice.created reached the org's invoices too.
    let store = app.account_store();
    let deadline = std::time::Instant::now() + hookline_e2e::WAIT_LIMIT;
    loop {
        let invoices = store.list_invoices(&org, 10).await.unwrap();
        if invoices.iter().any(|i| i.customer_id == customer) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no invoice of {customer} was kept: {invoices:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cancelled in localstripe: its customer.subscription.deleted drops the org to free and
    // tells the owner.
    localstripe(Method::DELETE, &format!("/v1/subscriptions/{sub_id}"), &[]).await;
    app.wait_entitlements(&org, "the free plan after cancelling", |e| {
        e["tier"] == "free" && e["status"] == "canceled"
    })
    .await;
    let deadline = std::time::Instant::now() + hookline_e2e::WAIT_LIMIT;
    while !subjects(&app, "owner@acme.test")
        .iter()
        .any(|s| s.contains("cancelled"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no cancellation mail: {:?}",
            subjects(&app, "owner@acme.test")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_first_payment_localstripe_declines_gives_no_plan() {
    let app = BillingServer::spawn(BillingOptions {
        localstripe_webhook: true,
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let customer = app.customer_via_checkout(&org).await;
    // Stripe's test card that attaches, then declines every charge.
    add_card_numbered(&customer, "4000000000000341").await;
    let sub_id = subscribe(&customer, &app.prices.team).await;
    app.wait_entitlements(&org, "the incomplete subscription", |e| {
        e["status"] == "incomplete"
    })
    .await;
    let e = app.entitlements(&org).await;
    assert_eq!(e["tier"], "free", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("incomplete")),
        "{e}"
    );
    let kept = app
        .account_store()
        .get_account(&org)
        .await
        .unwrap()
        .unwrap();
    let kept = kept.subscription.unwrap();
    assert_eq!((kept.id.as_str(), kept.tier), (sub_id.as_str(), Tier::Team));
    app.shutdown().await;
}

// ---- Checkout and the Portal ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_answers_a_session_and_creates_the_orgs_customer_once() {
    let app = BillingServer::stripe().await;
    let org = org();
    app.set_owner(&org, "billing@acme.test").await;

    let (status, first) = app.checkout(&org, "team").await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first["id"].as_str().unwrap().starts_with("cs_test_"),
        "{first}"
    );
    assert!(
        first["url"]
            .as_str()
            .unwrap()
            .starts_with("https://checkout.stripe.com/"),
        "{first}"
    );
    let (status, second) = app.checkout(&org, "enterprise").await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(first["id"], second["id"]);

    let stub = app.stub();
    let customers: Vec<_> = stub
        .requests_to("/v1/customers")
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(customers.len(), 1, "the customer is created once");
    assert_eq!(customers[0].field("metadata[org_id]"), Some(org.as_str()));
    assert!(
        customers[0].idempotency_key.is_some(),
        "every create has a key"
    );

    let sessions = stub.requests_to("/v1/checkout/sessions");
    assert_eq!(sessions.len(), 2);
    let customer = app
        .account_store()
        .get_account(&org)
        .await
        .unwrap()
        .and_then(|a| a.customer_id)
        .unwrap();
    for (s, price) in sessions
        .iter()
        .zip([&app.prices.team, &app.prices.enterprise])
    {
        assert_eq!(s.field("mode"), Some("subscription"));
        assert_eq!(s.field("customer"), Some(customer.as_str()));
        assert_eq!(s.field("line_items[0][price]"), Some(price.as_str()));
        assert_eq!(s.field("metadata[org_id]"), Some(org.as_str()));
        assert!(s.idempotency_key.is_some());
    }

    // The customer in localstripe carries the org and the owner's email.
    let read = localstripe(Method::GET, &format!("/v1/customers/{customer}"), &[]).await;
    assert_eq!(read["metadata"]["org_id"], org.as_str());
    assert_eq!(read["email"], "billing@acme.test");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_for_a_tier_without_a_price_is_422_and_asks_stripe_nothing() {
    let app = BillingServer::stripe().await;
    let org = org();
    for tier in ["platinum", "free"] {
        let (status, body) = app.checkout(&org, tier).await;
        assert_eq!(status, 422, "{tier}: {body}");
        assert!(
            body.to_string().contains("tier"),
            "says which field: {body}"
        );
    }
    let (status, body) = app
        .call(
            Method::POST,
            "/api/v1/billing/checkout",
            Some(&app.admin(&org)),
            Some(
                json!({"tier": "team", "success_url": "not a url", "cancel_url": "https://x.test"}),
            ),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        app.stub().requests().is_empty(),
        "{:?}",
        app.stub().requests()
    );
    app.shutdown().await;
}

/// Every 4-character window of the key's secret part: none may appear in what Hookline says.
fn assert_no_key(text: &str, key: &str) {
    let secret = key.trim_start_matches("sk_test_");
    for w in secret.as_bytes().windows(4) {
        let fragment = std::str::from_utf8(w).unwrap();
        assert!(
            !text.contains(fragment),
            "{text:?} shows part of the key ({fragment:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_refusal_is_a_502_with_stripes_message_and_never_the_key() {
    // Stripe wants another key for sessions than the one Hookline has: its 401 echoes the
    // key's tail, which must not reach the caller.
    let app = BillingServer::spawn(BillingOptions {
        stub_api_key: Some("sk_test_the_account_key_Wq93".into()),
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let (status, body) = app.checkout(&org, "team").await;
    assert_eq!(status, 502, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("Invalid API Key provided"),
        "Stripe's message: {text}"
    );
    assert_no_key(&text, TEST_SECRET_KEY);
    app.shutdown().await;

    // Stripe's invalid_request_error: an enterprise price Stripe does not know.
    let app = BillingServer::spawn(BillingOptions {
        stripe_lacks_enterprise_price: true,
        ..BillingOptions::default()
    })
    .await;
    let (status, body) = app.checkout(&org, "enterprise").await;
    assert_eq!(status, 502, "{body}");
    let text = body.to_string();
    assert!(
        text.contains(&format!("No such price: '{}'", app.prices.enterprise)),
        "Stripe's message: {text}"
    );
    assert_no_key(&text, TEST_SECRET_KEY);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_portal_is_409_until_the_org_has_a_customer_then_answers_a_url() {
    let app = BillingServer::stripe().await;
    let org = org();
    let (status, body) = app.portal(&org).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.to_string().contains("/api/v1/billing/checkout"),
        "says what to do: {body}"
    );
    assert!(app.stub().requests().is_empty());

    let customer = app.customer_via_checkout(&org).await;
    let (status, body) = app.portal(&org).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .starts_with("https://billing.stripe.com/"),
        "{body}"
    );
    let sent = app.stub().requests_to("/v1/billing_portal/sessions");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].field("customer"), Some(customer.as_str()));
    assert!(sent[0].idempotency_key.is_some(), "every create has a key");
    assert_eq!(
        sent[0].field("return_url"),
        Some("https://app.example.com/settings")
    );
    app.shutdown().await;
}

// ---- Stripe's order and repeats ------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_subscription_update_arriving_after_a_newer_one_changes_nothing() {
    let app = BillingServer::stripe().await;
    let org = org();
    app.set_owner(&org, "owner@older.test").await;
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let (team, ent) = (app.prices.team.clone(), app.prices.enterprise.clone());
    let t = now();

    let created = sub("sub_order", &customer, &org, &team);
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        t - 300,
        subscription_object(&created),
    ))
    .await;
    let newer = sub("sub_order", &customer, &org, &ent);
    app.deliver_event(&stripe_event(
        "customer.subscription.updated",
        t - 10,
        subscription_object(&newer),
    ))
    .await;
    assert_eq!(app.entitlements(&org).await["tier"], "enterprise");
    let mails_before = app.mails_to("owner@older.test").len();

    // Sent a minute before the newer one, delivered after it.
    let older = SubscriptionState {
        status: "past_due",
        ..sub("sub_order", &customer, &org, &team)
    };
    app.deliver_event(&stripe_event(
        "customer.subscription.updated",
        t - 60,
        subscription_object(&older),
    ))
    .await;
    let e = app.entitlements(&org).await;
    assert_eq!(
        (e["tier"].as_str(), e["status"].as_str()),
        (Some("enterprise"), Some("active"))
    );
    assert_eq!(
        app.mails_to("owner@older.test").len(),
        mails_before,
        "a stale event mails no one"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_delivered_after_the_invoice_was_paid_neither_reopens_it_nor_alerts() {
    let app = BillingServer::stripe().await;
    let org = org();
    let owner = "owner@late.test";
    app.set_owner(&org, owner).await;
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let s = sub("sub_late", &customer, &org, &app.prices.team);
    let t = now();
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        t - 300,
        subscription_object(&s),
    ))
    .await;
    app.deliver_event(&stripe_event(
        "invoice.paid",
        t - 10,
        invoice_object("in_late", &customer, "paid", 2900, true),
    ))
    .await;
    // The first attempt's failure, sent before the retry that paid it, arrives last.
    app.deliver_event(&stripe_event(
        "invoice.payment_failed",
        t - 60,
        invoice_object("in_late", &customer, "open", 2900, false),
    ))
    .await;
    let invoices = app.account_store().list_invoices(&org, 10).await.unwrap();
    assert_eq!(invoices.len(), 1);
    assert_eq!(
        (invoices[0].status.as_str(), invoices[0].amount_paid),
        ("paid", 2900)
    );
    assert_eq!(
        subjects(&app, owner),
        vec!["Receipt for Hookline invoice HL-late".to_owned()]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_is_sent_even_when_a_later_update_of_the_invoice_arrived_first() {
    let app = BillingServer::stripe().await;
    let org = org();
    let owner = "owner@receipt.test";
    app.set_owner(&org, owner).await;
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let s = sub("sub_receipt", &customer, &org, &app.prices.team);
    let t = now();
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        t - 300,
        subscription_object(&s),
    ))
    .await;
    // Stripe's invoice.updated (paid) of the next second is delivered before invoice.paid.
    app.deliver_event(&stripe_event(
        "invoice.updated",
        t - 9,
        invoice_object("in_receipt", &customer, "paid", 2900, true),
    ))
    .await;
    let paid = stripe_event(
        "invoice.paid",
        t - 10,
        invoice_object("in_receipt", &customer, "paid", 2900, true),
    );
    app.deliver_event(&paid).await;
    assert_eq!(
        subjects(&app, owner),
        vec!["Receipt for Hookline invoice HL-receipt".to_owned()]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_kept_from_either_shape_of_charge_refunded_and_their_updates() {
    let app = BillingServer::stripe().await;
    let org = org();
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let s = sub("sub_refunds", &customer, &org, &app.prices.team);
    let t = now();
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        t - 300,
        subscription_object(&s),
    ))
    .await;
    let refund = |id: &str, charge: &str, amount: i64, status: &str| {
        json!({"id": id, "object": "refund", "charge": charge, "amount": amount,
               "currency": "usd", "status": status, "created": t - 100})
    };
    // An older API version: the charge lists its refunds.
    app.deliver_event(&stripe_event(
        "charge.refunded",
        t - 90,
        json!({"id": "ch_old", "object": "charge", "customer": customer, "amount": 2900,
               "amount_refunded": 900, "currency": "usd",
               "refunds": {"object": "list", "data": [refund("re_old", "ch_old", 900, "succeeded")]}}),
    ))
    .await;
    // Since 2022-11-15 it does not: Hookline asks Stripe for the charge's refunds.
    let stub = app.stub.as_ref().unwrap();
    stub.add_refund(refund("re_new", "ch_new", 2900, "pending"));
    stub.add_object(json!({"id": "ch_new", "object": "charge", "customer": customer}));
    app.deliver_event(&stripe_event(
        "charge.refunded",
        t - 80,
        json!({"id": "ch_new", "object": "charge", "customer": customer, "amount": 2900,
               "amount_refunded": 2900, "currency": "usd", "refunded": true}),
    ))
    .await;
    // The pending refund then succeeds.
    app.deliver_event(&stripe_event(
        "charge.refund.updated",
        t - 70,
        // A refund object names its charge, not its customer: Hookline asks Stripe whose
        // charge it is.
        refund("re_new", "ch_new", 2900, "succeeded"),
    ))
    .await;
    let mut refunds = app.account_store().list_refunds(&org, 10).await.unwrap();
    refunds.sort_by(|a, b| a.id.cmp(&b.id));
    let seen: Vec<_> = refunds
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                r.charge_id.as_str(),
                r.amount,
                r.status.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("re_new", "ch_new", 2900, "succeeded"),
            ("re_old", "ch_old", 900, "succeeded")
        ]
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_twice_changes_nothing_and_mails_once() {
    let app = BillingServer::stripe().await;
    let org = org();
    app.set_owner(&org, "owner@twice.test").await;
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let s = sub("sub_twice", &customer, &org, &app.prices.team);
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        now() - 5,
        subscription_object(&s),
    ))
    .await;
    let paid = stripe_event(
        "invoice.paid",
        now(),
        invoice_object("in_twice", &customer, "paid", 2900, true),
    );
    app.deliver_event(&paid).await;
    let account = app.account_store().get_account(&org).await.unwrap();
    let invoices = app.account_store().list_invoices(&org, 10).await.unwrap();

    // Stripe sends it again: the route answers, the log keeps one delivery.
    let (status, body) = app.post_event(&paid).await;
    assert!((200..300).contains(&status), "{status} {body}");
    // And a redelivery that reaches billing itself (past the delivery log) is a no-op too.
    let applied = app
        .app
        .billing
        .as_ref()
        .unwrap()
        .apply_event(&serde_json::to_vec(&paid).unwrap())
        .await
        .unwrap();
    assert!(
        format!("{applied:?}").contains(&org),
        "the event is still the org's: {applied:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(
        app.account_store().get_account(&org).await.unwrap(),
        account
    );
    assert_eq!(
        app.account_store().list_invoices(&org, 10).await.unwrap(),
        invoices
    );
    let receipts: Vec<_> = subjects(&app, "owner@twice.test")
        .into_iter()
        .filter(|s| s.starts_with("Receipt"))
        .collect();
    assert_eq!(receipts.len(), 1, "one receipt: {receipts:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_through_a_second_checkout_keeps_the_new_plan_when_the_old_one_is_cancelled() {
    // Checkout always starts a new subscription: an org on team that buys enterprise holds
    // both until it cancels the old one, and that cancellation must not drop it to free.
    let app = BillingServer::spawn(BillingOptions {
        localstripe_webhook: true,
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let owner = "owner@upgrade.test";
    app.set_owner(&org, owner).await;
    let customer = app.customer_via_checkout(&org).await;
    add_card(&customer).await;
    let old = subscribe(&customer, &app.prices.team).await;
    app.wait_entitlements(&org, "the team plan", |e| e["tier"] == "team")
        .await;
    let new = subscribe(&customer, &app.prices.enterprise).await;
    app.wait_entitlements(&org, "the enterprise plan", |e| e["tier"] == "enterprise")
        .await;
    localstripe(Method::DELETE, &format!("/v1/subscriptions/{old}"), &[]).await;
    // localstripe sends a second after the change; give the worker time to apply it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = app.entitlements(&org).await;
    assert_eq!(
        (e["tier"].as_str(), e["status"].as_str()),
        (Some("enterprise"), Some("active")),
        "{e}"
    );
    let kept = app
        .account_store()
        .get_account(&org)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.subscription.unwrap().id, new);
    assert!(
        !subjects(&app, owner)
            .iter()
            .any(|s| s.contains("cancelled")),
        "the org still has a subscription: {:?}",
        subjects(&app, owner)
    );
    app.shutdown().await;

    // The same, with the old subscription's cancellation delivered before the new one's
    // creation (Stripe's order is not the order of delivery).
    let app = BillingServer::stripe().await;
    let org = hookline_e2e::billing::org();
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let (team, ent) = (app.prices.team.clone(), app.prices.enterprise.clone());
    let t = now();
    let old = sub("sub_old", &customer, &org, &team);
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        t - 300,
        subscription_object(&old),
    ))
    .await;
    app.deliver_event(&stripe_event(
        "customer.subscription.deleted",
        t - 10,
        subscription_object(&SubscriptionState {
            status: "canceled",
            ..old.clone()
        }),
    ))
    .await;
    // The new one starts incomplete (Checkout's first payment still running), then turns
    // active: its own later events must still apply after it replaced the cancelled one.
    let new = sub("sub_new", &customer, &org, &ent);
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        t - 100,
        subscription_object(&SubscriptionState {
            status: "incomplete",
            ..new.clone()
        }),
    ))
    .await;
    app.deliver_event(&stripe_event(
        "customer.subscription.updated",
        t - 99,
        subscription_object(&new),
    ))
    .await;
    let e = app.entitlements(&org).await;
    assert_eq!(
        (e["tier"].as_str(), e["status"].as_str()),
        (Some("enterprise"), Some("active")),
        "{e}"
    );

    // And with the old one cancelled at its period's end, as the Portal does by default.
    let org = hookline_e2e::billing::org();
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let old = sub("sub_old", &customer, &org, &team);
    let events = [
        ("customer.subscription.created", t - 300, old.clone()),
        (
            "customer.subscription.created",
            t - 100,
            sub("sub_new", &customer, &org, &ent),
        ),
        (
            "customer.subscription.updated",
            t - 50,
            SubscriptionState {
                cancel_at_period_end: true,
                ..old.clone()
            },
        ),
        (
            "customer.subscription.deleted",
            t - 10,
            SubscriptionState {
                status: "canceled",
                ..old
            },
        ),
    ];
    for (kind, at, state) in events {
        app.deliver_event(&stripe_event(kind, at, subscription_object(&state)))
            .await;
        assert_eq!(
            app.entitlements(&org).await["tier"],
            if at == t - 300 { "team" } else { "enterprise" },
            "after {kind} at {at}"
        );
    }
    app.shutdown().await;
}

// ---- the owner's mail ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_is_mailed_about_money_exactly_once_per_event() {
    let app = BillingServer::stripe().await;
    let org = org();
    let owner = "owner@money.test";
    app.set_owner(&org, owner).await;
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let (team, ent) = (app.prices.team.clone(), app.prices.enterprise.clone());
    let t = now() - 100;
    let s = sub("sub_money", &customer, &org, &team);
    let mut events = vec![
        stripe_event("customer.subscription.created", t, subscription_object(&s)),
        stripe_event(
            "invoice.paid",
            t + 1,
            invoice_object("in_money_1", &customer, "paid", 2900, true),
        ),
        stripe_event(
            "invoice.payment_failed",
            t + 2,
            invoice_object("in_money_2", &customer, "open", 2900, false),
        ),
        // The tier does not change (cancelling at the period's end): no mail.
        stripe_event(
            "customer.subscription.updated",
            t + 3,
            subscription_object(&SubscriptionState {
                cancel_at_period_end: true,
                ..s.clone()
            }),
        ),
        stripe_event(
            "customer.subscription.updated",
            t + 4,
            subscription_object(&sub("sub_money", &customer, &org, &ent)),
        ),
        stripe_event(
            "customer.subscription.deleted",
            t + 5,
            subscription_object(&SubscriptionState {
                status: "canceled",
                ..sub("sub_money", &customer, &org, &ent)
            }),
        ),
    ];
    for e in &events {
        app.deliver_event(e).await;
    }
    // Every event again, as Stripe retries.
    for e in events.drain(..) {
        app.post_event(&e).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut got = subjects(&app, owner);
    got.sort();
    let mut want = vec![
        "Receipt for Hookline invoice HL-money_1".to_owned(),
        "Payment failed for Hookline invoice HL-money_2".to_owned(),
        "Your Hookline plan is now enterprise".to_owned(),
        "Your Hookline subscription was cancelled".to_owned(),
    ];
    want.sort();
    assert_eq!(got, want);
    let receipt = app
        .mails_to(owner)
        .into_iter()
        .find(|m| m.mail.subject.starts_with("Receipt"))
        .unwrap();
    assert!(
        receipt.mail.text.contains("29.00 USD"),
        "{}",
        receipt.mail.text
    );
    assert!(
        receipt
            .mail
            .text
            .contains("https://invoice.stripe.com/i/in_money_1"),
        "{}",
        receipt.mail.text
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_service_that_fails_never_fails_the_webhook() {
    let app = BillingServer::stripe().await;
    let org = org();
    app.set_owner(&org, "owner@broken.test").await;
    app.break_outbox();
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let s = sub("sub_broken", &customer, &org, &app.prices.team);
    let created = stripe_event(
        "customer.subscription.created",
        now() - 5,
        subscription_object(&s),
    );
    let paid = stripe_event(
        "invoice.paid",
        now(),
        invoice_object("in_broken", &customer, "paid", 2900, true),
    );
    app.deliver_event(&created).await;
    app.deliver_event(&paid).await;

    let log = app
        .app
        .store
        .list(&hookline::ports::store::DeliveryQuery {
            source: Some(hookline::model::Source::Stripe),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    for d in &log {
        assert_eq!(
            d.status,
            hookline::model::DeliveryStatus::Processed,
            "{} {:?}",
            d.delivery_id,
            d.error
        );
        assert_eq!(d.attempts, 1, "processed at the first attempt");
    }
    assert_eq!(app.entitlements(&org).await["tier"], "team");
    let invoices = app.account_store().list_invoices(&org, 10).await.unwrap();
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0].status, "paid");
    app.shutdown().await;
}

// ---- entitlements --------------------------------------------------------------------------

/// One subscription event, and the entitlements it must leave.
struct Case<'a> {
    event: &'a str,
    price: &'a str,
    status: &'a str,
    period_end: i64,
    tier: &'a str,
    want_status: &'a str,
    /// What the reason must contain (`None`: no reason).
    reason: Option<&'a str>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entitlements_follow_the_subscription_through_every_tier_and_status() {
    let app = BillingServer::stripe().await;
    let (team, ent) = (app.prices.team.clone(), app.prices.enterprise.clone());
    let table = TierTable::default();
    let soon = now() + 10 * DAY;
    let ended = now() - DAY;
    let cases = [
        Case {
            event: "customer.subscription.created",
            price: &team,
            status: "active",
            period_end: soon,
            tier: "team",
            want_status: "active",
            reason: None,
        },
        Case {
            event: "customer.subscription.created",
            price: &ent,
            status: "active",
            period_end: soon,
            tier: "enterprise",
            want_status: "active",
            reason: None,
        },
        Case {
            event: "customer.subscription.created",
            price: &team,
            status: "trialing",
            period_end: soon,
            tier: "team",
            want_status: "trialing",
            reason: None,
        },
        Case {
            event: "customer.subscription.updated",
            price: &team,
            status: "past_due",
            period_end: soon,
            tier: "team",
            want_status: "past_due",
            reason: None,
        },
        Case {
            event: "customer.subscription.updated",
            price: &team,
            status: "past_due",
            period_end: ended,
            tier: "free",
            want_status: "past_due",
            reason: Some("ended unpaid"),
        },
        Case {
            event: "customer.subscription.updated",
            price: &ent,
            status: "unpaid",
            period_end: soon,
            tier: "free",
            want_status: "unpaid",
            reason: Some("unpaid"),
        },
        Case {
            event: "customer.subscription.deleted",
            price: &ent,
            status: "canceled",
            period_end: soon,
            tier: "free",
            want_status: "canceled",
            reason: Some("canceled"),
        },
        Case {
            event: "customer.subscription.created",
            price: "price_not_hooklines",
            status: "active",
            period_end: soon,
            tier: "free",
            want_status: "active",
            reason: None,
        },
    ];
    for Case {
        event,
        price,
        status,
        period_end,
        tier,
        want_status,
        reason,
    } in cases
    {
        let org = org();
        let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
        let s = SubscriptionState {
            status,
            current_period_end: period_end,
            ..sub("sub_case", &customer, &org, price)
        };
        app.deliver_event(&stripe_event(event, now(), subscription_object(&s)))
            .await;
        let e = app.entitlements(&org).await;
        let case = format!("{event} {status} (period end {period_end}): {e}");
        assert_eq!(e["org_id"], org.as_str(), "{case}");
        assert_eq!(e["tier"], tier, "{case}");
        assert_eq!(e["status"], want_status, "{case}");
        assert_eq!(e["source"], "stripe", "{case}");
        let plan = table.plan(tier.parse::<Tier>().unwrap());
        assert_eq!(e["limits"], json!(plan.limits), "{case}");
        assert_eq!(e["features"], json!(plan.features), "{case}");
        assert_eq!(
            e["current_period_end"]
                .as_str()
                .map(|s| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp()),
            Some(period_end),
            "{case}"
        );
        match reason {
            Some(r) => assert!(
                e["reason"].as_str().is_some_and(|why| why.contains(r)),
                "{case}: the reason says {r:?}"
            ),
            None => assert!(e.get("reason").is_none_or(Value::is_null), "{case}"),
        }
        for field in ["usage", "cancel_at_period_end"] {
            assert!(e.get(field).is_some(), "{case}: {field}");
        }
    }

    // An org Stripe never heard of.
    let e = app.entitlements(&org()).await;
    assert_eq!(
        (e["tier"].as_str(), e["status"].as_str()),
        (Some("free"), Some("none"))
    );
    assert_eq!(e["limits"], json!(table.free.limits));
    assert_eq!(e["usage"]["repositories"], 0);
    app.shutdown().await;
}

/// A licence signed by `key` with these claims' times.
fn licence(key: &LicenceKey, tier: Tier, iat: i64, exp: i64) -> String {
    let plan = TierTable::default().plan(tier).clone();
    key.sign(&json!({
        "iss": "hookline", "sub": "org-selfhosted", "tier": tier, "features": plan.features,
        "limits": plan.limits, "seats": 10, "iat": iat, "nbf": iat, "exp": exp,
        "jti": uuid::Uuid::new_v4().to_string(),
    }))
}

async fn licensed(token: String, public_key: Option<String>) -> BillingServer {
    BillingServer::spawn(BillingOptions {
        tiers_from: TierFrom::Licence { token, public_key },
        ..BillingOptions::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_licence_gives_its_tier_to_the_deployment() {
    let key = LicenceKey::generate();
    let issued = key
        .issue(
            &LicenceRequest {
                org_id: "org-selfhosted".into(),
                tier: Tier::Enterprise,
                seats: 25,
                expires_at: chrono::Utc::now() + chrono::Duration::days(365),
            },
            TierTable::default().plan(Tier::Enterprise),
            chrono::Utc::now(),
        )
        .unwrap();
    let app = licensed(issued.licence.clone(), Some(key.public_key_base64())).await;
    let e = app.entitlements("org-selfhosted").await;
    assert_eq!(e["tier"], "enterprise", "{e}");
    assert_eq!(e["status"], "licensed");
    assert_eq!(e["source"], "licence");
    assert_eq!(e["limits"], json!(issued.claims.limits));
    assert!(e.get("reason").is_none_or(Value::is_null), "{e}");
    // Nothing is limited by an enterprise licence: a fourth repository connects.
    let token = app.admin("org-selfhosted");
    for n in 0..4 {
        let (status, body) = connect(&app, &token, &format!("acme/lic-{n}")).await;
        assert_eq!(status, 201, "{body}");
    }
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_licence_that_does_not_verify_falls_back_to_free_and_says_why() {
    let key = LicenceKey::generate();
    let t = now();
    let good = licence(&key, Tier::Enterprise, t - 60, t + 365 * DAY);
    let team = licence(&key, Tier::Team, t - 60, t + 365 * DAY);
    let parts: Vec<&str> = good.split('.').collect();
    let other_payload = team.split('.').nth(1).unwrap();
    // {"alg":"none","typ":"JWT"}
    let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let cases: Vec<(&str, String, Option<String>, &str)> = vec![
        (
            "expired",
            licence(&key, Tier::Enterprise, t - 400 * DAY, t - DAY),
            Some(key.public_key_base64()),
            "expired",
        ),
        (
            "not yet valid",
            licence(&key, Tier::Enterprise, t + 30 * DAY, t + 400 * DAY),
            Some(key.public_key_base64()),
            "not valid before",
        ),
        (
            "signed by another key",
            good.clone(),
            Some(LicenceKey::generate().public_key_base64()),
            "does not verify",
        ),
        (
            "a claim changed after signing",
            format!("{}.{}.{}", parts[0], other_payload, parts[2]),
            Some(key.public_key_base64()),
            "does not verify",
        ),
        (
            "alg none",
            format!("{none_header}.{}.", parts[1]),
            Some(key.public_key_base64()),
            "not EdDSA",
        ),
        ("no public key", good.clone(), None, "LICENSE_PUBLIC_KEY"),
    ];
    for (case, token, public_key, why) in cases {
        let app = licensed(token, public_key).await;
        let e = app.entitlements("org-selfhosted").await;
        assert_eq!(e["tier"], "free", "{case}: {e}");
        assert_eq!(e["status"], "unlicensed", "{case}: {e}");
        assert_eq!(
            e["limits"],
            json!(TierTable::default().free.limits),
            "{case}"
        );
        let reason = e["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(why),
            "{case}: the reason {reason:?} says {why:?}"
        );
        app.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_stripe_or_a_licence_nothing_is_limited_and_entitlements_say_so() {
    let app = BillingServer::spawn(BillingOptions {
        tiers_from: TierFrom::Unlimited,
        tiers: Some(r#"{"free": {"limits": {"events_per_month": 1}}}"#.into()),
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let e = app.entitlements(&org).await;
    assert_eq!(e["status"], "unlimited", "{e}");
    assert_eq!(e["source"], "unlimited");
    assert_eq!(
        e["limits"],
        json!({"repositories": null, "endpoints": null, "events_per_month": null})
    );
    assert!(
        e["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing is limited"),
        "{e}"
    );
    let token = app.admin(&org);
    for n in 0..3 {
        let (status, body) = endpoint(&app, &token, n).await;
        assert_eq!(status, 201, "{body}");
    }
    for _ in 0..3 {
        let (status, body) = publish(&app, &token).await;
        assert_eq!(status, 202, "{body}");
    }
    app.shutdown().await;
}

// ---- limits --------------------------------------------------------------------------------

async fn connect(app: &BillingServer, token: &str, repo: &str) -> (u16, Value) {
    app.call(
        Method::POST,
        "/api/v1/repositories/connect",
        Some(token),
        Some(json!({"repository_full_name": repo, "setup_webhook": false})),
    )
    .await
}

async fn endpoint(app: &BillingServer, token: &str, n: usize) -> (u16, Value) {
    app.call(
        Method::POST,
        "/api/v1/endpoints",
        Some(token),
        Some(
            json!({"url": format!("http://127.0.0.1:9/hook-{n}"), "event_types": ["invoice.paid"]}),
        ),
    )
    .await
}

async fn publish(app: &BillingServer, token: &str) -> (u16, Value) {
    publish_as(
        app,
        token,
        &format!("ord_{}", uuid::Uuid::new_v4().simple()),
    )
    .await
}

/// Publish with the publisher's own event id (so a retry is recognised).
async fn publish_as(app: &BillingServer, token: &str, id: &str) -> (u16, Value) {
    app.call(
        Method::POST,
        "/api/v1/events",
        Some(token),
        Some(json!({"id": id, "type": "invoice.paid", "data": {"n": 1}})),
    )
    .await
}

#[track_caller]
fn assert_plan_limit(status: u16, body: &Value, limit: u64) {
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"], "plan_limit_reached", "{body}");
    assert_eq!(body["limit"], limit, "{body}");
    assert_eq!(body["upgrade"], "/api/v1/billing/checkout", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_repository_on_the_free_plan_is_402_and_connects_nothing() {
    let app = BillingServer::stripe().await;
    let org = org();
    let token = app.admin(&org);
    for n in 0..3 {
        let (status, body) = connect(&app, &token, &format!("acme/repo-{n}")).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = connect(&app, &token, "acme/repo-3").await;
    assert_plan_limit(status, &body, 3);
    assert_eq!(body["resource"], "repositories");
    let (status, list) = app
        .call(
            Method::GET,
            "/api/v1/repositories/connections",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert!(!list.to_string().contains("acme/repo-3"), "{list}");
    assert_eq!(app.entitlements(&org).await["usage"]["repositories"], 3);

    // The team plan lifts the limit.
    let customer = format!("cus_{}", uuid::Uuid::new_v4().simple());
    let s = sub("sub_repos", &customer, &org, &app.prices.team);
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        now(),
        subscription_object(&s),
    ))
    .await;
    let (status, body) = connect(&app, &token, "acme/repo-3").await;
    assert_eq!(status, 201, "{body}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_endpoint_on_the_free_plan_is_402_and_creates_nothing() {
    let app = BillingServer::stripe().await;
    let org = org();
    let token = app.admin(&org);
    for n in 0..2 {
        let (status, body) = endpoint(&app, &token, n).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = endpoint(&app, &token, 2).await;
    assert_plan_limit(status, &body, 2);
    assert_eq!(body["resource"], "endpoints");
    let (status, list) = app
        .call(Method::GET, "/api/v1/endpoints", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{list}");
    assert!(!list.to_string().contains("hook-2"), "{list}");
    assert_eq!(app.entitlements(&org).await["usage"]["endpoints"], 2);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_past_the_months_events_is_402_yet_inbound_deliveries_are_never_refused() {
    let app = BillingServer::spawn(BillingOptions {
        tiers: Some(r#"{"free": {"limits": {"events_per_month": 3}}}"#.into()),
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let token = app.admin(&org);
    for n in 0..3 {
        let (status, body) = publish_as(&app, &token, &format!("order-{n}")).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, body) = publish_as(&app, &token, "order-3").await;
    assert_plan_limit(status, &body, 3);
    assert_eq!(body["resource"], "events_per_month");
    let (status, body) = app
        .call(Method::GET, "/api/v1/events/order-3", Some(&token), None)
        .await;
    assert_eq!(status, 404, "nothing published past the limit: {body}");
    let (status, body) = app
        .call(Method::GET, "/api/v1/events/order-2", Some(&token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let e = app.entitlements(&org).await;
    assert_eq!(e["usage"]["events_per_month"], 3, "{e}");

    // A provider's delivery is taken whatever the plan.
    let body = hookline_e2e::payload("github-push.json");
    let signed = hookline::providers::simulate::sign(&hookline::providers::simulate::Simulation {
        source: hookline::model::Source::Github,
        secret: hookline_e2e::GITHUB_SECRET,
        url: Some(&format!("{}/api/v1/webhooks/github", app.url())),
        body: &body,
        event: Some("push"),
        now: chrono::Utc::now(),
        delivery_id: None,
    })
    .unwrap();
    let mut req = app.http.post(&signed.url).body(signed.body.clone());
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), 202, "{}", res.text().await.unwrap());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_at_the_limit_still_answers_the_event_it_published() {
    let app = BillingServer::spawn(BillingOptions {
        tiers: Some(r#"{"free": {"limits": {"events_per_month": 1}}}"#.into()),
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let token = app.admin(&org);
    let (status, first) = publish_as(&app, &token, "order-1").await;
    assert_eq!(status, 202, "{first}");
    // The client did not hear the answer and sends the same event again.
    let (status, again) = publish_as(&app, &token, "order-1").await;
    assert_eq!(
        status, 200,
        "a retry answers the event it published: {again}"
    );
    assert_eq!(again["id"], first["id"]);
    assert_eq!(app.entitlements(&org).await["usage"]["events_per_month"], 1);
    app.shutdown().await;
}

// ---- isolation -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_billing_route_acts_on_the_callers_org_only() {
    let app = BillingServer::stripe().await;
    let (a, b) = (org(), org());

    // Another org's entitlements do not exist for this caller.
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/api/v1/billing/entitlements/{b}"),
            Some(&app.admin(&a)),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.to_string().contains(&b), "{body}");
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/api/v1/billing/entitlements/{a}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);

    // Checkout and the portal need billing:manage or admin.
    for scopes in [vec![Scope::ReposRead, Scope::WebhooksManage], vec![]] {
        let token = app.token(&a, &scopes);
        for path in ["/api/v1/billing/checkout", "/api/v1/billing/portal"] {
            let (status, body) = app
                .call(
                    Method::POST,
                    path,
                    Some(&token),
                    Some(json!({"tier": "team", "success_url": "https://x.test", "cancel_url": "https://x.test"})),
                )
                .await;
            assert_eq!(status, 403, "{path} with {scopes:?}: {body}");
        }
    }
    for scope in [Scope::BillingManage, Scope::Admin] {
        let (status, body) = app
            .call(
                Method::POST,
                "/api/v1/billing/checkout",
                Some(&app.token(&a, &[scope])),
                Some(json!({"tier": "team", "success_url": "https://x.test/ok", "cancel_url": "https://x.test/no"})),
            )
            .await;
        assert_eq!(status, 200, "{scope:?}: {body}");
    }

    // A's checkout made A's customer: B still has none, and its portal says so.
    let store = app.account_store();
    let a_customer = store
        .get_account(&a)
        .await
        .unwrap()
        .and_then(|x| x.customer_id);
    assert!(a_customer.is_some());
    assert_eq!(
        store
            .get_account(&b)
            .await
            .unwrap()
            .and_then(|x| x.customer_id),
        None
    );
    let (status, body) = app.portal(&b).await;
    assert_eq!(status, 409, "{body}");
    let sessions = app.stub().requests_to("/v1/checkout/sessions");
    assert!(sessions
        .iter()
        .all(|s| s.field("metadata[org_id]") == Some(a.as_str())));

    // A's subscription is A's alone.
    let s = sub(
        "sub_iso",
        a_customer.as_deref().unwrap(),
        &a,
        &app.prices.team,
    );
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        now(),
        subscription_object(&s),
    ))
    .await;
    assert_eq!(app.entitlements(&a).await["tier"], "team");
    assert_eq!(app.entitlements(&b).await["tier"], "free");
    // Even an event that names B for A's customer does not move the customer to B.
    let hijack = sub(
        "sub_iso2",
        a_customer.as_deref().unwrap(),
        &b,
        &app.prices.enterprise,
    );
    app.deliver_event(&stripe_event(
        "customer.subscription.created",
        now(),
        subscription_object(&hijack),
    ))
    .await;
    assert_eq!(app.entitlements(&b).await["tier"], "free");
    app.shutdown().await;
}

// ---- reconciliation ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciliation_repairs_a_subscription_whose_webhook_was_missed_and_mails_no_one() {
    let app = BillingServer::spawn(BillingOptions {
        localstripe_webhook: true,
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let owner = "owner@reconcile.test";
    app.set_owner(&org, owner).await;
    let customer = app.customer_via_checkout(&org).await;
    add_card(&customer).await;
    let sub_id = subscribe(&customer, &app.prices.team).await;
    app.wait_entitlements(&org, "the team plan", |e| e["tier"] == "team")
        .await;

    // Hookline stops hearing from Stripe; the subscription is cancelled meanwhile.
    app.hook.as_ref().unwrap().disable().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mails_before = app.mails_to(owner).len();
    localstripe(Method::DELETE, &format!("/v1/subscriptions/{sub_id}"), &[]).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        app.entitlements(&org).await["tier"],
        "team",
        "the webhook was missed"
    );

    let billing = app.app.billing.as_ref().unwrap();
    let done = billing.reconcile(Some(&org)).await.unwrap();
    assert_eq!(done.repaired, 1, "{done:?}");
    let e = app.entitlements(&org).await;
    assert_eq!(
        (e["tier"].as_str(), e["status"].as_str()),
        (Some("free"), Some("canceled")),
        "{e}"
    );
    assert_eq!(
        app.mails_to(owner).len(),
        mails_before,
        "reconciliation mails no one"
    );

    let again = billing.reconcile(Some(&org)).await.unwrap();
    assert_eq!(again.repaired, 0, "nothing left to repair: {again:?}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hookline_serve_reconciles_on_its_own_every_billing_reconcile_interval() {
    // No webhook reaches this server at all: only the reconcile loop can learn of the plan.
    let app = BillingServer::spawn(BillingOptions {
        reconcile_interval: Some("300ms".into()),
        ..BillingOptions::default()
    })
    .await;
    let org = org();
    let customer = app.customer_via_checkout(&org).await;
    add_card(&customer).await;
    subscribe(&customer, &app.prices.team).await;
    app.wait_entitlements(&org, "the team plan, from reconciliation alone", |e| {
        e["tier"] == "team"
    })
    .await;
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_an_unknown_customer_is_kept_and_applied_once_its_customer_is_linked() {
    let app = BillingServer::stripe().await;
    let org = org();
    // A customer made outside Hookline (the dashboard): no org in its metadata.
    let customer = localstripe(
        Method::POST,
        "/v1/customers",
        &[("email", "someone@x.test")],
    )
    .await;
    let customer = customer["id"].as_str().unwrap().to_owned();
    let paid = stripe_event(
        "invoice.paid",
        now(),
        invoice_object("in_parked", &customer, "paid", 4900, true),
    );
    app.deliver_event(&paid).await;
    let store = app.account_store();
    let parked = store.parked_events(100).await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].customer_id, customer);
    assert!(store.list_invoices(&org, 10).await.unwrap().is_empty());

    // The org completes a Checkout with that customer: now it is linked.
    let session = json!({
        "id": "cs_test_parked", "object": "checkout.session", "mode": "subscription",
        "customer": customer, "client_reference_id": org, "metadata": {"org_id": org},
        "status": "complete",
    });
    app.deliver_event(&stripe_event("checkout.session.completed", now(), session))
        .await;
    let done = app
        .app
        .billing
        .as_ref()
        .unwrap()
        .reconcile(Some(&org))
        .await
        .unwrap();
    assert_eq!(done.parked_applied, 1, "{done:?}");
    let invoices = store.list_invoices(&org, 10).await.unwrap();
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    assert_eq!(invoices[0].id, "in_parked");
    assert!(store.parked_events(100).await.unwrap().is_empty());
    app.shutdown().await;
}
