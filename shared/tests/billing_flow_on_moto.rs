//! Billing as the event worker and billing-api run it on AWS: Stripe events applied over
//! DynamoDB, the owner mailed through SES (read back from moto's record of what it sent),
//! redeliveries and out-of-order events changing nothing, entitlements following along.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test billing_flow_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test fails, none skips.

use hookline::billing::service::{Applied, Billing};
use hookline::billing::tiers::Tier;
use hookline::outbound::model::OrgProfile;
use hookline::ports::orgs::aws::DynamoOrgStore;
use hookline::ports::orgs::OrgStore;
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use hookline::runtime::lambda::aws_billing;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// The sender's domain, verified in moto as a deployment verifies it in SES.
const SENDER_DOMAIN: &str = "billing.hookline.test";
const TEAM_PRICE: &str = "price_team_moto";

/// A deployment: billing over a fresh table and SES, configured as the worker's environment
/// and the provider secret configure it (a Stripe key, so tiers come from Stripe), and the org
/// store beside it; the org's owner has an address no other test mails.
struct Deployment {
    billing: Arc<Billing>,
    orgs: Arc<dyn OrgStore>,
    owner: String,
}

async fn deploy(org_id: &str) -> Deployment {
    let sdk = sdk_config_for(Some(&moto_endpoint())).await;
    let table = format!("hookline-billing-flow-{}", uuid::Uuid::new_v4());
    let dynamo = aws_sdk_dynamodb::Client::new(&sdk);
    create_table(&dynamo, &table)
        .await
        .expect("create the test table in moto");
    aws_sdk_sesv2::Client::new(&sdk)
        .create_email_identity()
        .email_identity(SENDER_DOMAIN)
        .send()
        .await
        .expect("verify the sender's domain in moto");
    let env = HashMap::from([
        ("HOOKLINE_TABLE", table.clone()),
        ("HOOKLINE_MAIL_FROM", format!("billing@{SENDER_DOMAIN}")),
        // Never called here: events and entitlements need no Stripe API call.
        ("STRIPE_SECRET_KEY", "sk_test_moto_flow".to_owned()),
        ("STRIPE_API_BASE", "http://127.0.0.1:9".to_owned()),
        ("STRIPE_PRICE_ID_TEAM", TEAM_PRICE.to_owned()),
    ]);
    let billing =
        aws_billing(&sdk, &|name: &str| env.get(name).cloned()).expect("billing configures");
    let orgs: Arc<dyn OrgStore> = Arc::new(DynamoOrgStore::new(dynamo, table));
    let owner = format!("owner-{}@example.com", uuid::Uuid::new_v4().simple());
    let now = chrono::Utc::now();
    orgs.put_org(&OrgProfile {
        org_id: org_id.to_owned(),
        name: Some("Acme".into()),
        owner_email: Some(owner.clone()),
        created_at: now,
        updated_at: now,
    })
    .await
    .expect("set the org's owner");
    Deployment {
        billing,
        orgs,
        owner,
    }
}

/// The (subject, body) of every message moto's SES sent to `to`, oldest first. moto's dump can
/// fail while another test writes at the same moment: ask again.
async fn mail_to(to: &str) -> Vec<(String, String)> {
    let endpoint = moto_endpoint();
    for _ in 0..50 {
        let res = reqwest::get(format!("{endpoint}/moto-api/data.json"))
            .await
            .expect("moto answers");
        if let (true, Ok(data)) = (res.status().is_success(), res.json::<Value>().await) {
            return data["ses"]["Message"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["destinations"]["ToAddresses"][0] == to)
                .map(|m| {
                    assert_eq!(m["source"], format!("billing@{SENDER_DOMAIN}"));
                    (
                        m["subject"].as_str().unwrap_or_default().to_owned(),
                        m["body"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("moto's /moto-api/data.json never answered JSON");
}

/// A Stripe event as Stripe posts it (signature checks happen before billing sees it).
fn event(id: &str, kind: &str, created: i64, object: Value) -> Vec<u8> {
    json!({"id": id, "object": "event", "type": kind, "created": created,
           "livemode": false, "data": {"object": object}})
    .to_string()
    .into_bytes()
}

fn subscription(org_id: &str, status: &str, created: i64) -> Value {
    json!({
        "id": "sub_moto_1", "object": "subscription", "customer": "cus_moto_1",
        "status": status, "created": created,
        "current_period_end": created + 30 * 86_400, "cancel_at_period_end": false,
        "metadata": {"org_id": org_id},
        "items": {"object": "list", "data": [{"price": {"id": TEAM_PRICE}}]},
    })
}

fn invoice_paid(created: i64) -> Value {
    json!({
        "id": "in_moto_1", "object": "invoice", "customer": "cus_moto_1",
        "subscription": "sub_moto_1", "number": "HL-0001", "status": "paid",
        "currency": "eur", "amount_due": 4900, "amount_paid": 4900, "amount_remaining": 0,
        "hosted_invoice_url": "https://invoice.stripe.com/i/acct_1/test_moto",
        "created": created,
    })
}

#[tokio::test]
async fn a_subscription_and_its_paid_invoice_make_the_org_team_and_mail_one_receipt() {
    let org = "org_acme_moto";
    let d = deploy(org).await;
    let t = chrono::Utc::now().timestamp() - 600;

    let created = event(
        "evt_moto_sub_created",
        "customer.subscription.created",
        t,
        subscription(org, "active", t),
    );
    assert_eq!(
        d.billing.apply_event(&created).await.unwrap(),
        Applied::Applied { org_id: org.into() }
    );
    let e = d.billing.entitlements(org).await.unwrap();
    assert_eq!(
        (e.tier, e.status.as_str(), e.source),
        (Tier::Team, "active", "stripe")
    );
    assert!(
        mail_to(&d.owner).await.is_empty(),
        "a new subscription mails no one"
    );

    let paid = event(
        "evt_moto_inv_paid",
        "invoice.paid",
        t + 5,
        invoice_paid(t + 5),
    );
    assert_eq!(
        d.billing.apply_event(&paid).await.unwrap(),
        Applied::Applied { org_id: org.into() }
    );
    let sent = mail_to(&d.owner).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].0.contains("Receipt") && sent[0].0.contains("HL-0001"),
        "{sent:?}"
    );
    assert!(sent[0].1.contains("49.00 EUR"), "{sent:?}");

    // Stripe delivers the same event again: the equal write changes nothing (the store
    // rewrites an equal version), and the event's notice was claimed, so nobody is mailed twice.
    let before = d.billing.entitlements(org).await.unwrap();
    d.billing.apply_event(&paid).await.unwrap();
    assert_eq!(mail_to(&d.owner).await.len(), 1);
    assert_eq!(d.billing.entitlements(org).await.unwrap(), before);

    // Entitlements still say team, with the owner's profile untouched.
    let e = d.billing.entitlements(org).await.unwrap();
    assert_eq!(e.tier, Tier::Team);
    assert_eq!(
        d.orgs.get_org(org).await.unwrap().unwrap().owner_email,
        Some(d.owner.clone())
    );
}

#[tokio::test]
async fn an_older_event_arriving_late_never_undoes_a_cancellation() {
    let org = "org_initech_moto";
    let d = deploy(org).await;
    let t = chrono::Utc::now().timestamp() - 600;
    d.billing
        .apply_event(&event(
            "evt_moto_created",
            "customer.subscription.created",
            t,
            subscription(org, "active", t),
        ))
        .await
        .unwrap();
    let deleted = event(
        "evt_moto_deleted",
        "customer.subscription.deleted",
        t + 60,
        subscription(org, "canceled", t),
    );
    d.billing.apply_event(&deleted).await.unwrap();
    let e = d.billing.entitlements(org).await.unwrap();
    assert_eq!((e.tier, e.status.as_str()), (Tier::Free, "canceled"));
    let sent = mail_to(&d.owner).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].0.contains("cancelled"), "{sent:?}");

    // An update from before the cancellation, delivered after it: stale, nothing mailed.
    let late = event(
        "evt_moto_late_update",
        "customer.subscription.updated",
        t + 30,
        subscription(org, "active", t),
    );
    assert_eq!(
        d.billing.apply_event(&late).await.unwrap(),
        Applied::Stale { org_id: org.into() }
    );
    assert_eq!(d.billing.entitlements(org).await.unwrap().tier, Tier::Free);
    assert_eq!(mail_to(&d.owner).await.len(), 1);
}

#[tokio::test]
async fn an_event_for_a_customer_no_org_has_is_kept_not_guessed() {
    let d = deploy("org_hooli_moto").await;
    let t = chrono::Utc::now().timestamp() - 600;
    let mut sub = subscription("ignored", "active", t);
    sub["metadata"] = json!({});
    sub["customer"] = json!("cus_moto_stranger");
    let stranger = event("evt_moto_stranger", "customer.subscription.created", t, sub);
    assert_eq!(
        d.billing.apply_event(&stranger).await.unwrap(),
        Applied::Parked
    );
    let e = d.billing.entitlements("org_hooli_moto").await.unwrap();
    assert_eq!((e.tier, e.status.as_str()), (Tier::Free, "none"));
    assert!(mail_to(&d.owner).await.is_empty());
}
