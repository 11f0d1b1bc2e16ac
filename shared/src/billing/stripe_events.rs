//! Reading Stripe's objects: the twelve events of seed 000 become the changes Hookline keeps
//! (a customer linked, a subscription, an invoice, refunds). Subscriptions listed by
//! reconciliation go through the same [`subscription`] reader as webhook events do, so both
//! map a price to a tier the same way.

use super::model::{Invoice, Refund, Subscription, SubscriptionStatus, Version};
use super::tiers::Tier;
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The events Hookline acts on (seed 000's list); any other Stripe event is logged only.
pub const HANDLED: [&str; 12] = [
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.created",
    "invoice.updated",
    "invoice.finalized",
    "invoice.paid",
    "invoice.payment_failed",
    "invoice.voided",
    "charge.refunded",
    "charge.refund.updated",
];

/// Which tier a Stripe price is: `STRIPE_PRICE_ID_TEAM` / `STRIPE_PRICE_ID_ENTERPRISE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PriceMap {
    pub team: Option<String>,
    pub enterprise: Option<String>,
}

impl PriceMap {
    pub fn tier_of(&self, price_id: Option<&str>) -> Tier {
        match price_id {
            Some(p) if self.enterprise.as_deref() == Some(p) => Tier::Enterprise,
            Some(p) if self.team.as_deref() == Some(p) => Tier::Team,
            _ => Tier::Free,
        }
    }

    pub fn price_of(&self, tier: Tier) -> Option<&str> {
        match tier {
            Tier::Free => None,
            Tier::Team => self.team.as_deref(),
            Tier::Enterprise => self.enterprise.as_deref(),
        }
    }
}

/// A verified Stripe event, as far as Hookline reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StripeEvent {
    pub id: String,
    pub event_type: String,
    /// The event's `created` (epoch seconds).
    pub created: i64,
    pub object: Value,
}

impl StripeEvent {
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let v: Value =
            serde_json::from_slice(payload).map_err(|_| "the event is not JSON".to_owned())?;
        let id = str_at(&v, &["id"]).ok_or("the event has no id")?;
        let event_type = str_at(&v, &["type"]).ok_or("the event has no type")?;
        let created = v["created"]
            .as_i64()
            .ok_or("the event has no created time")?;
        let object = v["data"]["object"].clone();
        if !object.is_object() {
            return Err(format!("event {id} has no data.object"));
        }
        Ok(Self {
            id,
            event_type,
            created,
            object,
        })
    }

    /// The Stripe customer the event is about.
    pub fn customer_id(&self) -> Option<String> {
        match self.object["object"].as_str() {
            Some("customer") => str_at(&self.object, &["id"]),
            _ => customer_of(&self.object),
        }
    }

    /// The org the event names itself (`metadata.org_id` on the object, its subscription's
    /// details, or a Checkout Session's `client_reference_id`).
    pub fn named_org(&self) -> Option<String> {
        [
            &["metadata", "org_id"][..],
            &["subscription_details", "metadata", "org_id"],
            &["parent", "subscription_details", "metadata", "org_id"],
            &["client_reference_id"],
        ]
        .iter()
        .find_map(|path| str_at(&self.object, path))
        .filter(|s| !s.is_empty())
    }

    /// Orders events of the same second: a later step of an object's life ranks higher.
    pub fn version(&self) -> Version {
        let rank = match self.event_type.as_str() {
            "customer.subscription.created" => 1,
            "customer.subscription.updated" => 2,
            "customer.subscription.deleted" => 3,
            t if t.starts_with("invoice.") => invoice_rank(&self.object),
            "charge.refunded" | "charge.refund.updated" => refund_rank(&self.object),
            _ => 0,
        };
        Version::new(self.created, rank)
    }
}

/// What one event changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A Checkout Session completed: the customer (and its subscription) belong to the org.
    CheckoutCompleted {
        customer_id: String,
    },
    Subscription(Subscription),
    Invoice(Invoice),
    Refunds(Vec<Refund>),
    /// A charge was refunded, but the event does not list its refunds: ask Stripe.
    RefundsOf {
        charge_id: String,
    },
    /// An event Hookline does not act on.
    Ignored,
}

/// The change `event` makes for `org_id`; `Err` names what the object lacks.
pub fn change(event: &StripeEvent, org_id: &str, prices: &PriceMap) -> Result<Change, String> {
    let o = &event.object;
    let version = event.version();
    match event.event_type.as_str() {
        "checkout.session.completed" => {
            let customer_id = customer_of(o).ok_or("the session has no customer")?;
            Ok(Change::CheckoutCompleted { customer_id })
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let mut sub = subscription(o, prices, version, &event.id)?;
            if event.event_type == "customer.subscription.deleted" {
                sub.status = SubscriptionStatus::Canceled;
            }
            Ok(Change::Subscription(sub))
        }
        t if t.starts_with("invoice.") && HANDLED.contains(&t) => {
            Ok(Change::Invoice(invoice(o, org_id, version)?))
        }
        "charge.refunded" => {
            let charge_id = str_at(o, &["id"]).ok_or("the charge has no id")?;
            if !o["refunds"]["data"].is_array() {
                // An API version since 2022-11-15: the charge no longer lists its refunds.
                return Ok(Change::RefundsOf { charge_id });
            }
            let refunds = o["refunds"]["data"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|r| refund(r, org_id, Some(&charge_id), version).ok())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            Ok(Change::Refunds(refunds))
        }
        "charge.refund.updated" => Ok(Change::Refunds(vec![refund(o, org_id, None, version)?])),
        _ => Ok(Change::Ignored),
    }
}

/// A Stripe subscription object (from an event or a list) as Hookline keeps it.
pub fn subscription(
    o: &Value,
    prices: &PriceMap,
    version: Version,
    source: &str,
) -> Result<Subscription, String> {
    let id = str_at(o, &["id"]).ok_or("the subscription has no id")?;
    let customer_id = customer_of(o).ok_or_else(|| format!("subscription {id} has no customer"))?;
    let status_text =
        str_at(o, &["status"]).ok_or_else(|| format!("subscription {id} has no status"))?;
    let status = SubscriptionStatus::parse(&status_text)
        .ok_or_else(|| format!("subscription {id} has an unknown status {status_text:?}"))?;
    let item = &o["items"]["data"][0];
    // `price.id` since Stripe's 2019 API; `plan.id` where an older version or an emulator
    // sends only that. Top-level `plan` is the older single-plan shape.
    let price_id = str_at(item, &["price", "id"])
        .or_else(|| str_at(item, &["plan", "id"]))
        .or_else(|| str_at(o, &["plan", "id"]));
    // Newer API versions moved the period onto the item.
    let period_end = o["current_period_end"]
        .as_i64()
        .or_else(|| item["current_period_end"].as_i64())
        .and_then(|s| DateTime::from_timestamp(s, 0));
    Ok(Subscription {
        tier: prices.tier_of(price_id.as_deref()),
        id,
        customer_id,
        status,
        price_id,
        current_period_end: period_end,
        cancel_at_period_end: o["cancel_at_period_end"].as_bool().unwrap_or(false),
        version,
        source: source.to_owned(),
    })
}

fn invoice(o: &Value, org_id: &str, version: Version) -> Result<Invoice, String> {
    let id = str_at(o, &["id"]).ok_or("the invoice has no id")?;
    Ok(Invoice {
        customer_id: customer_of(o).ok_or_else(|| format!("invoice {id} has no customer"))?,
        subscription_id: str_at(o, &["subscription"])
            .or_else(|| str_at(o, &["subscription", "id"]))
            .or_else(|| str_at(o, &["parent", "subscription_details", "subscription"])),
        number: str_at(o, &["number"]),
        status: str_at(o, &["status"]).unwrap_or_else(|| "draft".into()),
        currency: str_at(o, &["currency"]).unwrap_or_default(),
        amount_due: o["amount_due"].as_i64().unwrap_or(0),
        amount_paid: o["amount_paid"].as_i64().unwrap_or(0),
        amount_remaining: o["amount_remaining"].as_i64().unwrap_or(0),
        hosted_invoice_url: str_at(o, &["hosted_invoice_url"]),
        created: time_at(o, "created"),
        org_id: org_id.to_owned(),
        id,
        version,
    })
}

/// A Stripe refund object as Hookline keeps it (`charge_id` when the caller knows it).
pub fn refund(
    o: &Value,
    org_id: &str,
    charge_id: Option<&str>,
    version: Version,
) -> Result<Refund, String> {
    let id = str_at(o, &["id"]).ok_or("the refund has no id")?;
    let charge_id = charge_id
        .map(str::to_owned)
        .or_else(|| str_at(o, &["charge"]))
        .or_else(|| str_at(o, &["charge", "id"]))
        .ok_or_else(|| format!("refund {id} has no charge"))?;
    Ok(Refund {
        org_id: org_id.to_owned(),
        charge_id,
        currency: str_at(o, &["currency"]).unwrap_or_default(),
        amount: o["amount"].as_i64().unwrap_or(0),
        status: str_at(o, &["status"]).unwrap_or_else(|| "pending".into()),
        created: time_at(o, "created"),
        id,
        version,
    })
}

fn invoice_rank(o: &Value) -> u8 {
    match o["status"].as_str() {
        Some("draft") => 1,
        Some("open") => 2,
        Some("uncollectible") => 3,
        Some("paid") | Some("void") => 4,
        _ => 0,
    }
}

fn refund_rank(o: &Value) -> u8 {
    // charge.refunded carries the charge; its refunds' statuses decide per refund, so it
    // ranks as "pending" and a later charge.refund.updated of the same second wins.
    match o["status"].as_str() {
        Some("pending") | Some("requires_action") => 1,
        Some("succeeded") | Some("failed") | Some("canceled") => 2,
        _ => 1,
    }
}

/// The customer id of an object whose `customer` is an id or an expanded customer.
fn customer_of(o: &Value) -> Option<String> {
    str_at(o, &["customer"]).or_else(|| str_at(o, &["customer", "id"]))
}

fn str_at(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str().map(str::to_owned)
}

fn time_at(o: &Value, field: &str) -> DateTime<Utc> {
    o[field]
        .as_i64()
        .and_then(|s| DateTime::from_timestamp(s, 0))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prices() -> PriceMap {
        PriceMap {
            team: Some("price_team".into()),
            enterprise: Some("price_ent".into()),
        }
    }

    fn event(event_type: &str, created: i64, object: Value) -> StripeEvent {
        StripeEvent::parse(
            json!({"id": "evt_1", "type": event_type, "created": created, "data": {"object": object}})
                .to_string()
                .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_subscription_maps_its_price_to_a_tier_and_keeps_its_period() {
        let e = event(
            "customer.subscription.updated",
            100,
            json!({"object": "subscription", "id": "sub_1", "customer": "cus_1", "status": "active",
                   "cancel_at_period_end": true, "current_period_end": 1_800_000_000,
                   "metadata": {"org_id": "acme"},
                   "items": {"data": [{"price": {"id": "price_ent"}}]}}),
        );
        assert_eq!(e.named_org().as_deref(), Some("acme"));
        let Change::Subscription(s) = change(&e, "acme", &prices()).unwrap() else {
            panic!("a subscription change")
        };
        assert_eq!(
            (s.tier, s.status),
            (Tier::Enterprise, SubscriptionStatus::Active)
        );
        assert!(s.cancel_at_period_end);
        assert_eq!(s.current_period_end.unwrap().timestamp(), 1_800_000_000);
        assert_eq!(s.version, Version::new(100, 2));
    }

    #[test]
    fn a_plan_only_item_as_older_apis_and_localstripe_send_maps_too() {
        let o = json!({"id": "sub_2", "customer": "cus_2", "status": "trialing",
                       "items": {"data": [{"plan": {"id": "price_team"}}]}});
        let s = subscription(&o, &prices(), Version::new(1, 0), "reconcile").unwrap();
        assert_eq!(s.tier, Tier::Team);
        assert_eq!(s.price_id.as_deref(), Some("price_team"));
    }

    #[test]
    fn an_unknown_price_is_the_free_tier_and_a_deleted_subscription_is_canceled() {
        let e = event(
            "customer.subscription.deleted",
            5,
            json!({"id": "sub_3", "customer": "cus_3", "status": "active",
                   "items": {"data": [{"price": {"id": "price_other"}}]}}),
        );
        let Change::Subscription(s) = change(&e, "o", &prices()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.tier, s.status),
            (Tier::Free, SubscriptionStatus::Canceled)
        );
        assert!(
            e.version() > Version::new(5, 2),
            "deleted outranks updated in its second"
        );
    }

    #[test]
    fn invoices_and_refunds_keep_what_the_billing_page_shows() {
        let e = event(
            "invoice.paid",
            7,
            json!({"id": "in_1", "customer": "cus_1", "subscription": "sub_1", "number": "A-1",
                   "status": "paid", "currency": "usd", "amount_due": 4900, "amount_paid": 4900,
                   "amount_remaining": 0, "hosted_invoice_url": "https://invoice.stripe.com/i/x",
                   "created": 6}),
        );
        let Change::Invoice(i) = change(&e, "o", &prices()).unwrap() else {
            panic!()
        };
        assert_eq!(i.number.as_deref(), Some("A-1"));
        assert_eq!((i.amount_paid, i.version), (4900, Version::new(7, 4)));
        let e = event(
            "charge.refunded",
            8,
            json!({"object": "charge", "id": "ch_1", "customer": "cus_1",
                   "refunds": {"data": [{"id": "re_1", "amount": 100, "currency": "usd",
                                          "status": "succeeded", "created": 8}]}}),
        );
        let Change::Refunds(r) = change(&e, "o", &prices()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r[0].id.as_str(), r[0].charge_id.as_str()),
            ("re_1", "ch_1")
        );
        assert_eq!(e.customer_id().as_deref(), Some("cus_1"));
    }

    #[test]
    fn an_event_without_its_object_is_refused_with_a_reason() {
        let err =
            StripeEvent::parse(br#"{"id":"evt_x","type":"invoice.paid","created":1}"#).unwrap_err();
        assert!(err.contains("evt_x"), "{err}");
        assert!(StripeEvent::parse(b"not json").is_err());
    }
}
