//! The behaviour every [`BillingStore`] adapter must have. The embedded store and the DynamoDB
//! store run these through [`billing_conformance!`](crate::billing_conformance), each test on a
//! fresh, empty store.

use super::{BillingError, BillingStore};
use crate::billing::model::{
    Invoice, ParkedEvent, Refund, Subscription, SubscriptionStatus, Usage, UsageMetric, Version,
};
use crate::billing::tiers::Tier;
use chrono::{DateTime, Utc};
use std::collections::HashSet;
use std::sync::Arc;

/// The usage period most cases count in.
pub const PERIOD: &str = "2026-03";

/// A whole-second instant, `secs` after a fixed base.
pub fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_770_000_000 + secs, 0).unwrap_or_default()
}

/// A Version `secs` after the base, with `rank`.
pub fn v(secs: i64, rank: u8) -> Version {
    Version::new(t(secs).timestamp(), rank)
}

pub fn subscription(customer_id: &str, secs: i64, rank: u8) -> Subscription {
    Subscription {
        id: format!("sub_of_{customer_id}"),
        customer_id: customer_id.to_owned(),
        status: SubscriptionStatus::Active,
        price_id: Some("price_team".to_owned()),
        tier: Tier::Team,
        current_period_end: Some(t(secs + 30 * 86_400)),
        cancel_at_period_end: false,
        version: v(secs, rank),
        source: format!("evt_{secs}_{rank}"),
    }
}

pub fn invoice(org: &str, id: &str, created_secs: i64, version: Version, status: &str) -> Invoice {
    Invoice {
        id: id.to_owned(),
        org_id: org.to_owned(),
        customer_id: format!("cus_{org}"),
        subscription_id: Some(format!("sub_{org}")),
        number: Some(format!("HL-{id}")),
        status: status.to_owned(),
        currency: "eur".to_owned(),
        amount_due: 4900,
        amount_paid: if status == "paid" { 4900 } else { 0 },
        amount_remaining: if status == "paid" { 0 } else { 4900 },
        hosted_invoice_url: Some(format!("https://invoice.stripe.com/i/{id}")),
        created: t(created_secs),
        version,
    }
}

pub fn refund(org: &str, id: &str, created_secs: i64, version: Version, status: &str) -> Refund {
    Refund {
        id: id.to_owned(),
        org_id: org.to_owned(),
        charge_id: format!("ch_{id}"),
        currency: "eur".to_owned(),
        amount: 1200,
        status: status.to_owned(),
        created: t(created_secs),
        version,
    }
}

pub fn parked(event_id: &str, customer_id: &str, secs: i64) -> ParkedEvent {
    ParkedEvent {
        event_id: event_id.to_owned(),
        customer_id: customer_id.to_owned(),
        received_at: t(secs),
        payload: format!(
            r#"{{"id":"{event_id}","type":"invoice.paid","data":{{"object":{{"customer":"{customer_id}"}}}}}}"#
        ),
    }
}

fn taken(result: Result<impl std::fmt::Debug, BillingError>, customer: &str) {
    match result {
        Err(BillingError::CustomerTaken { customer_id }) => assert_eq!(customer_id, customer),
        other => panic!("expected CustomerTaken for {customer}, got {other:?}"),
    }
}

pub async fn a_fresh_org_has_no_account_and_counts_nothing(store: &dyn BillingStore) {
    assert_eq!(store.get_account("org-a").await.unwrap(), None);
    assert_eq!(store.org_for_customer("cus_a").await.unwrap(), None);
    assert!(store.list_invoices("org-a", 10).await.unwrap().is_empty());
    assert!(store.list_refunds("org-a", 10).await.unwrap().is_empty());
    assert!(store.parked_events(10).await.unwrap().is_empty());
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap(),
        Usage {
            period: PERIOD.to_owned(),
            events_published: 0,
            inbound_deliveries: 0,
        }
    );
}

pub async fn an_older_event_never_overwrites_a_newer_subscription(store: &dyn BillingStore) {
    let updated = SubscriptionStatus::PastDue;
    let newer = Subscription {
        status: updated,
        ..subscription("cus_a", 100, 1)
    };
    assert!(store.put_subscription("org-a", &newer).await.unwrap());
    for (secs, rank) in [(100, 0), (99, 9), (0, 0)] {
        let older = Subscription {
            tier: Tier::Enterprise,
            ..subscription("cus_a", secs, rank)
        };
        assert!(
            !store.put_subscription("org-a", &older).await.unwrap(),
            "version {secs}/{rank} is older"
        );
    }
    let account = store.get_account("org-a").await.unwrap().unwrap();
    assert_eq!(account.subscription, Some(newer));

    let newest = Subscription {
        status: SubscriptionStatus::Canceled,
        tier: Tier::Free,
        price_id: None,
        current_period_end: None,
        cancel_at_period_end: true,
        ..subscription("cus_a", 100, 2)
    };
    assert!(store.put_subscription("org-a", &newest).await.unwrap());
    let account = store.get_account("org-a").await.unwrap().unwrap();
    assert_eq!(account.subscription, Some(newest));
}

pub async fn another_subscription_replaces_the_stored_one_whatever_the_versions(
    store: &dyn BillingStore,
) {
    let old = Subscription {
        status: SubscriptionStatus::Canceled,
        ..subscription("cus_a", 200, 3)
    };
    assert!(store.put_subscription("org-a", &old).await.unwrap());
    // The org's second subscription, created before the first one's cancellation: the
    // service chose it, so it is stored with its own (older) version...
    let new = Subscription {
        id: "sub_second".to_owned(),
        status: SubscriptionStatus::Incomplete,
        tier: Tier::Enterprise,
        ..subscription("cus_a", 150, 1)
    };
    assert!(store.put_subscription("org-a", &new).await.unwrap());
    // ...and its own later events apply, its older ones do not.
    let active = Subscription {
        status: SubscriptionStatus::Active,
        ..subscription("cus_a", 151, 2)
    };
    let active = Subscription {
        id: "sub_second".to_owned(),
        tier: Tier::Enterprise,
        ..active
    };
    assert!(store.put_subscription("org-a", &active).await.unwrap());
    let stale = Subscription {
        status: SubscriptionStatus::Incomplete,
        ..active.clone()
    };
    let stale = Subscription {
        version: v(150, 1),
        ..stale
    };
    assert!(!store.put_subscription("org-a", &stale).await.unwrap());
    let account = store.get_account("org-a").await.unwrap().unwrap();
    assert_eq!(account.subscription, Some(active));
}

pub async fn an_equal_version_writes_the_same_state_again(store: &dyn BillingStore) {
    let sub = subscription("cus_a", 100, 1);
    assert!(store.put_subscription("org-a", &sub).await.unwrap());
    assert!(store.put_subscription("org-a", &sub).await.unwrap());
    let reconciled = Subscription {
        source: "reconcile".to_owned(),
        ..sub
    };
    assert!(store.put_subscription("org-a", &reconciled).await.unwrap());
    let account = store.get_account("org-a").await.unwrap().unwrap();
    assert_eq!(account.subscription, Some(reconciled));
}

pub async fn a_customer_links_once_and_the_first_link_wins(store: &dyn BillingStore) {
    assert_eq!(
        store.link_customer("org-a", "cus_first").await.unwrap(),
        "cus_first"
    );
    assert_eq!(
        store.link_customer("org-a", "cus_first").await.unwrap(),
        "cus_first",
        "linking the same customer again is a no-op"
    );
    assert_eq!(
        store.link_customer("org-a", "cus_second").await.unwrap(),
        "cus_first",
        "the org keeps the customer it has"
    );
    assert_eq!(store.org_for_customer("cus_second").await.unwrap(), None);
    assert_eq!(
        store
            .org_for_customer("cus_first")
            .await
            .unwrap()
            .as_deref(),
        Some("org-a")
    );
    let account = store.get_account("org-a").await.unwrap().unwrap();
    assert_eq!(
        account,
        crate::billing::model::BillingAccount {
            org_id: "org-a".to_owned(),
            customer_id: Some("cus_first".to_owned()),
            subscription: None,
        }
    );
}

pub async fn another_orgs_customer_is_refused(store: &dyn BillingStore) {
    store.link_customer("org-a", "cus_a").await.unwrap();
    taken(store.link_customer("org-b", "cus_a").await, "cus_a");
    taken(
        store
            .put_subscription("org-b", &subscription("cus_a", 100, 0))
            .await,
        "cus_a",
    );
    assert_eq!(store.get_account("org-b").await.unwrap(), None);
    assert_eq!(
        store.org_for_customer("cus_a").await.unwrap().as_deref(),
        Some("org-a")
    );
    // Ids that would collide if keys were joined naively stay apart.
    for org in ["org-a#CUSTOMER", "org-a%23", "BILLORG#org-a"] {
        assert_eq!(store.get_account(org).await.unwrap(), None, "{org}");
    }
}

pub async fn put_subscription_links_its_customer(store: &dyn BillingStore) {
    let sub = subscription("cus_a", 100, 0);
    assert!(store.put_subscription("org-a", &sub).await.unwrap());
    let account = store.get_account("org-a").await.unwrap().unwrap();
    assert_eq!(account.customer_id.as_deref(), Some("cus_a"));
    assert_eq!(
        store.org_for_customer("cus_a").await.unwrap().as_deref(),
        Some("org-a")
    );
    // Its own customer is no reason to refuse the next event.
    assert!(store
        .put_subscription("org-a", &subscription("cus_a", 200, 0))
        .await
        .unwrap());
    assert_eq!(
        store.link_customer("org-a", "cus_a").await.unwrap(),
        "cus_a"
    );

    // An org linked before keeps its customer.
    store.link_customer("org-b", "cus_b").await.unwrap();
    assert!(store
        .put_subscription("org-b", &subscription("cus_b", 100, 0))
        .await
        .unwrap());
    let b = store.get_account("org-b").await.unwrap().unwrap();
    assert_eq!(b.customer_id.as_deref(), Some("cus_b"));
    assert_eq!(
        b.subscription.map(|s| s.customer_id).as_deref(),
        Some("cus_b")
    );
}

pub async fn of_twenty_concurrent_links_exactly_one_wins(store: Arc<dyn BillingStore>) {
    // Twenty customers race for one org: all are told the same winner.
    let links = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .link_customer("org-a", &format!("cus_{i}"))
                .await
                .unwrap()
        })
    });
    let answers: HashSet<String> = futures::future::join_all(links)
        .await
        .into_iter()
        .map(|r| r.expect("the link task finishes"))
        .collect();
    assert_eq!(answers.len(), 1, "{answers:?}");
    let winner = answers.into_iter().next().unwrap();
    let mut linked = 0;
    for i in 0..20 {
        let customer = format!("cus_{i}");
        match store.org_for_customer(&customer).await.unwrap() {
            Some(org) => {
                assert_eq!(
                    (org.as_str(), customer.as_str()),
                    ("org-a", winner.as_str())
                );
                linked += 1;
            }
            None => assert_ne!(customer, winner),
        }
    }
    assert_eq!(linked, 1);

    // Twenty orgs race for one customer: exactly one gets it, the others are refused.
    let links = (0..20).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let org = format!("org-{i}");
            let linked = store.link_customer(&org, "cus_shared").await;
            (org, linked)
        })
    });
    let mut winners = Vec::new();
    for done in futures::future::join_all(links).await {
        let (org, linked) = done.expect("the link task finishes");
        match linked {
            Ok(customer) => {
                assert_eq!(customer, "cus_shared");
                winners.push(org);
            }
            Err(e) => taken(Err::<(), _>(e), "cus_shared"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        store.org_for_customer("cus_shared").await.unwrap(),
        Some(winners[0].clone())
    );
}

pub async fn a_newer_invoice_replaces_an_older_one_never_the_reverse(store: &dyn BillingStore) {
    let open = invoice("org-a", "in_1", 10, v(10, 1), "open");
    let paid = invoice("org-a", "in_1", 10, v(20, 3), "paid");
    assert!(store.put_invoice(&open).await.unwrap());
    assert!(store.put_invoice(&paid).await.unwrap());
    assert!(
        !store.put_invoice(&open).await.unwrap(),
        "a late invoice.finalized does not reopen a paid invoice"
    );
    assert!(store.put_invoice(&paid).await.unwrap(), "equal is written");
    assert_eq!(store.list_invoices("org-a", 10).await.unwrap(), vec![paid]);
}

pub async fn invoices_list_newest_first_and_only_in_their_org(store: &dyn BillingStore) {
    for (id, created) in [("in_b", 20), ("in_a", 10), ("in_d", 40), ("in_c", 30)] {
        let inv = invoice("org-a", id, created, v(created, 0), "open");
        assert!(store.put_invoice(&inv).await.unwrap());
    }
    let other = invoice("org-b", "in_other", 50, v(50, 0), "paid");
    store.put_invoice(&other).await.unwrap();
    // The same Stripe id in another org is another record.
    let same_id = invoice("org-b", "in_a", 60, v(60, 0), "paid");
    store.put_invoice(&same_id).await.unwrap();

    let ids = |list: Vec<Invoice>| list.into_iter().map(|i| i.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_invoices("org-a", 10).await.unwrap()),
        ["in_d", "in_c", "in_b", "in_a"]
    );
    assert_eq!(
        ids(store.list_invoices("org-a", 2).await.unwrap()),
        ["in_d", "in_c"]
    );
    assert!(store.list_invoices("org-a", 0).await.unwrap().is_empty());
    assert_eq!(
        store.list_invoices("org-b", 10).await.unwrap(),
        vec![same_id, other]
    );
    let a = store.list_invoices("org-a", 10).await.unwrap();
    assert_eq!(a.last().map(|i| i.status.as_str()), Some("open"));
    assert!(store.list_invoices("org-c", 10).await.unwrap().is_empty());
}

pub async fn refunds_keep_the_newest_state_and_list_newest_first_in_their_org(
    store: &dyn BillingStore,
) {
    let pending = refund("org-a", "re_1", 10, v(10, 0), "pending");
    let succeeded = refund("org-a", "re_1", 10, v(30, 1), "succeeded");
    assert!(store.put_refund(&succeeded).await.unwrap());
    assert!(
        !store.put_refund(&pending).await.unwrap(),
        "an older charge.refunded does not undo the refund's update"
    );
    let second = refund("org-a", "re_2", 20, v(20, 0), "pending");
    assert!(store.put_refund(&second).await.unwrap());
    store
        .put_refund(&refund("org-b", "re_3", 40, v(40, 0), "succeeded"))
        .await
        .unwrap();
    assert_eq!(
        store.list_refunds("org-a", 10).await.unwrap(),
        vec![second.clone(), succeeded]
    );
    assert_eq!(store.list_refunds("org-a", 1).await.unwrap(), vec![second]);
    let b = store.list_refunds("org-b", 10).await.unwrap();
    assert_eq!(
        b.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["re_3"]
    );
}

pub async fn parked_events_round_trip_oldest_first_and_a_redelivery_keeps_one(
    store: &dyn BillingStore,
) {
    let first = parked("evt_1", "cus_x", 30);
    let second = parked("evt_2", "cus_y", 10);
    let third = parked("evt_3", "cus_x", 20);
    for event in [&first, &second, &third] {
        store.park_event(event).await.unwrap();
    }
    // Stripe delivers evt_1 again, later: still one, as first kept.
    store
        .park_event(&parked("evt_1", "cus_x", 90))
        .await
        .unwrap();
    assert_eq!(
        store.parked_events(10).await.unwrap(),
        vec![second.clone(), third.clone(), first.clone()]
    );
    assert_eq!(
        store.parked_events(2).await.unwrap(),
        vec![second.clone(), third.clone()]
    );

    store.remove_parked("evt_3").await.unwrap();
    store.remove_parked("evt_3").await.unwrap();
    store.remove_parked("evt_never_parked").await.unwrap();
    assert_eq!(store.parked_events(10).await.unwrap(), vec![second, first]);
}

pub async fn usage_counts_up_to_its_limit_exactly(store: &dyn BillingStore) {
    let m = UsageMetric::EventsPublished;
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 3, Some(5))
            .await
            .unwrap(),
        Some(3)
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 3, Some(5))
            .await
            .unwrap(),
        None,
        "3 + 3 would pass 5: nothing is counted"
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 2, Some(5))
            .await
            .unwrap(),
        Some(5),
        "up to the limit is allowed"
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 1, Some(5))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.add_usage("org-a", PERIOD, m, 1, None).await.unwrap(),
        Some(6),
        "without a limit it always counts"
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, UsageMetric::InboundDeliveries, 7, Some(2))
            .await
            .unwrap(),
        None,
        "a first count past the limit counts nothing"
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, UsageMetric::InboundDeliveries, 4, None)
            .await
            .unwrap(),
        Some(4)
    );
    let usage = store.usage("org-a", PERIOD).await.unwrap();
    assert_eq!((usage.events_published, usage.inbound_deliveries), (6, 4));
}

pub async fn of_concurrent_counts_exactly_the_limit_succeed(store: Arc<dyn BillingStore>) {
    const LIMIT: u64 = 7;
    let adds = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .add_usage(
                    "org-a",
                    PERIOD,
                    UsageMetric::EventsPublished,
                    1,
                    Some(LIMIT),
                )
                .await
                .unwrap()
        })
    });
    let mut counts: Vec<u64> = futures::future::join_all(adds)
        .await
        .into_iter()
        .filter_map(|r| r.expect("the count task finishes"))
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, (1..=LIMIT).collect::<Vec<_>>(), "each count once");
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap().events_published,
        LIMIT
    );
}

pub async fn giving_usage_back_never_goes_below_zero(store: &dyn BillingStore) {
    let m = UsageMetric::EventsPublished;
    store.remove_usage("org-a", PERIOD, m, 2).await.unwrap();
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap().events_published,
        0
    );
    store
        .add_usage("org-a", PERIOD, m, 5, Some(5))
        .await
        .unwrap();
    store.remove_usage("org-a", PERIOD, m, 2).await.unwrap();
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap().events_published,
        3
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 2, Some(5))
            .await
            .unwrap(),
        Some(5),
        "what was given back may be used again"
    );
    store.remove_usage("org-a", PERIOD, m, 9).await.unwrap();
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap().events_published,
        0
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 1, Some(5))
            .await
            .unwrap(),
        Some(1)
    );
}

pub async fn concurrent_give_backs_stop_at_zero(store: Arc<dyn BillingStore>) {
    let m = UsageMetric::EventsPublished;
    store.add_usage("org-a", PERIOD, m, 5, None).await.unwrap();
    let removes = (0..12).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .remove_usage("org-a", PERIOD, m, 1 + i % 2)
                .await
                .unwrap()
        })
    });
    for done in futures::future::join_all(removes).await {
        done.expect("the give-back task finishes");
    }
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap().events_published,
        0
    );
    assert_eq!(
        store
            .add_usage("org-a", PERIOD, m, 3, Some(3))
            .await
            .unwrap(),
        Some(3),
        "the count starts again from zero, not from below it"
    );
}

pub async fn periods_and_orgs_are_counted_apart(store: &dyn BillingStore) {
    let m = UsageMetric::EventsPublished;
    store
        .add_usage("org-a", PERIOD, m, 4, Some(4))
        .await
        .unwrap();
    assert_eq!(
        store
            .add_usage("org-a", "2026-04", m, 4, Some(4))
            .await
            .unwrap(),
        Some(4),
        "a new month starts from zero"
    );
    assert_eq!(
        store
            .add_usage("org-b", PERIOD, m, 4, Some(4))
            .await
            .unwrap(),
        Some(4),
        "another org has its own count"
    );
    store.remove_usage("org-b", PERIOD, m, 4).await.unwrap();
    assert_eq!(
        store.usage("org-a", PERIOD).await.unwrap().events_published,
        4
    );
    assert_eq!(
        store.usage("org-b", PERIOD).await.unwrap().events_published,
        0
    );
    let april = store.usage("org-a", "2026-04").await.unwrap();
    assert_eq!(april.period, "2026-04");
    assert_eq!(april.events_published, 4);
    assert_eq!(
        store
            .usage("org-a", "2026-05")
            .await
            .unwrap()
            .events_published,
        0
    );
    assert_eq!(
        store
            .usage("org-a#2026-03", PERIOD)
            .await
            .unwrap()
            .events_published,
        0
    );
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn BillingStore>)` for a fresh, empty store; the guard lives for the
/// test (a temp dir, a table).
#[macro_export]
macro_rules! billing_conformance {
    ($make:expr) => {
        mod billing_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::billing::conformance as c;

            macro_rules! case {
                ($name:ident, $takes:ident) => {
                    $crate::conformance_case!($make, $name, $takes);
                };
            }

            case!(a_fresh_org_has_no_account_and_counts_nothing, borrowed);
            case!(
                an_older_event_never_overwrites_a_newer_subscription,
                borrowed
            );
            case!(an_equal_version_writes_the_same_state_again, borrowed);
            case!(
                another_subscription_replaces_the_stored_one_whatever_the_versions,
                borrowed
            );
            case!(a_customer_links_once_and_the_first_link_wins, borrowed);
            case!(another_orgs_customer_is_refused, borrowed);
            case!(put_subscription_links_its_customer, borrowed);
            case!(of_twenty_concurrent_links_exactly_one_wins, shared);
            case!(
                a_newer_invoice_replaces_an_older_one_never_the_reverse,
                borrowed
            );
            case!(invoices_list_newest_first_and_only_in_their_org, borrowed);
            case!(
                refunds_keep_the_newest_state_and_list_newest_first_in_their_org,
                borrowed
            );
            case!(
                parked_events_round_trip_oldest_first_and_a_redelivery_keeps_one,
                borrowed
            );
            case!(usage_counts_up_to_its_limit_exactly, borrowed);
            case!(of_concurrent_counts_exactly_the_limit_succeed, shared);
            case!(giving_usage_back_never_goes_below_zero, borrowed);
            case!(concurrent_give_backs_stop_at_zero, shared);
            case!(periods_and_orgs_are_counted_apart, borrowed);
        }
    };
}
