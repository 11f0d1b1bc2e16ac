//! The behaviour every [`OutboundStore`] adapter must have. The embedded store and the
//! DynamoDB store run these through [`outbound_conformance!`](crate::outbound_conformance),
//! each test on a fresh, empty store.

use super::{valid_cursor, Appended, DeliveryFilter, OutboundError, OutboundStore};
use crate::connections::StoredSecret;
use crate::outbound::model::{
    Attempt, AttemptId, AttemptTrigger, Delivery, DeliveryId, DeliveryStatus, Endpoint, EndpointId,
    Event, EventId, NewEvent, DEFAULT_SIGNATURE_HEADER,
};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;
use std::sync::Arc;

/// A fixed millisecond-precise instant per test process, plus `secs`.
pub fn t(secs: i64) -> DateTime<Utc> {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
            - Duration::hours(1)
    }) + Duration::seconds(secs)
}

/// An enabled endpoint of `org` with a sealed secret and a previous one still signing.
pub fn endpoint(org: &str) -> Endpoint {
    Endpoint {
        id: EndpointId::generate(),
        org_id: org.to_owned(),
        url: "https://receiver.example.com/hooks/hookline".to_owned(),
        description: Some("billing receiver".to_owned()),
        event_types: vec!["invoice.paid".to_owned(), "github.*".to_owned()],
        signature_header: DEFAULT_SIGNATURE_HEADER.to_owned(),
        enabled: true,
        disabled_reason: None,
        rate_limit_per_second: Some(10),
        secret: StoredSecret {
            sealed: format!("sealed-{}", uuid::Uuid::new_v4()),
            valid_until: None,
        },
        previous_secret: Some(StoredSecret {
            sealed: "sealed-previous".to_owned(),
            valid_until: Some(t(86_400)),
        }),
        failing_since: None,
        created_at: t(0),
        updated_at: t(0),
    }
}

/// A fresh event of `event_type` for `org`, with nested data of every JSON kind.
pub fn new_event(org: &str, event_type: &str) -> NewEvent {
    NewEvent {
        id: EventId::generate(),
        org_id: org.to_owned(),
        event_type: event_type.to_owned(),
        created_at: t(0),
        data: serde_json::json!({
            "invoice": {"id": "in_1", "amount_paid": 4200, "currency": "usd"},
            "lines": [1, 2, 3],
            "paid": true,
            "note": null,
            "customer": "Ünïcode & <markup>"
        })
        .into(),
    }
}

/// The pending delivery of `event` to `endpoint`, as the dispatcher makes it.
pub fn delivery_for(endpoint: &Endpoint, event: &Event) -> Delivery {
    Delivery::pending(&endpoint.id, event, event.created_at)
}

/// Attempt `number` at `delivery`, made `number` minutes after t(0): a 200, or a 500.
pub fn attempt(delivery: &Delivery, number: u32, succeeded: bool) -> Attempt {
    Attempt {
        id: AttemptId::generate(),
        delivery_id: delivery.id.clone(),
        org_id: delivery.org_id.clone(),
        endpoint_id: delivery.endpoint_id.clone(),
        number,
        at: t(60 * i64::from(number)),
        url: "https://receiver.example.com/hooks/hookline".to_owned(),
        status_code: Some(if succeeded { 200 } else { 500 }),
        duration_ms: 120 + u64::from(number),
        response_body: Some(if succeeded { "ok" } else { "upstream error" }.to_owned()),
        error: (!succeeded).then(|| "500 Internal Server Error".to_owned()),
        succeeded,
        trigger: AttemptTrigger::Scheduled,
    }
}

/// `delivery` as it stands after `attempt`: delivered, or failed with a retry in 5 minutes;
/// the lease cleared.
pub fn after(delivery: &Delivery, attempt: &Attempt) -> Delivery {
    Delivery {
        status: if attempt.succeeded {
            DeliveryStatus::Delivered
        } else {
            DeliveryStatus::Failed
        },
        attempts: attempt.number,
        next_attempt_at: (!attempt.succeeded).then(|| attempt.at + Duration::minutes(5)),
        last_attempt_at: Some(attempt.at),
        last_status_code: attempt.status_code,
        last_error: attempt.error.clone(),
        lease_until: None,
        updated_at: attempt.at,
        ..delivery.clone()
    }
}

fn org() -> String {
    format!("org-{}", uuid::Uuid::new_v4())
}

/// Append `new`, which must be new to its org.
async fn append(store: &dyn OutboundStore, new: &NewEvent) -> Event {
    match store.append_event(new).await.unwrap() {
        Appended::Created(event) => event,
        Appended::Existing(event) => panic!("event {} already existed", event.id),
    }
}

/// An endpoint and `n` events of `org`, each with its delivery created.
async fn deliveries(store: &dyn OutboundStore, org: &str, n: usize) -> (Endpoint, Vec<Delivery>) {
    let ep = endpoint(org);
    store.create_endpoint(&ep).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let event = append(store, &new_event(org, "invoice.paid")).await;
        let d = delivery_for(&ep, &event);
        assert!(store.create_delivery(&d).await.unwrap());
        out.push(d);
    }
    (ep, out)
}

fn endpoint_ids(list: &[Endpoint]) -> Vec<EndpointId> {
    list.iter().map(|e| e.id.clone()).collect()
}

fn delivery_ids(list: &[Delivery]) -> Vec<DeliveryId> {
    list.iter().map(|d| d.id.clone()).collect()
}

fn seqs(list: &[Event]) -> Vec<u64> {
    list.iter().map(|e| e.seq).collect()
}

/// Every delivery of `org` matching `filter`, following the cursors in pages of `page`.
async fn all_deliveries(
    store: &dyn OutboundStore,
    org: &str,
    filter: &DeliveryFilter,
    page: usize,
) -> Vec<Delivery> {
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..100 {
        let (items, next) = store
            .list_deliveries(org, filter, page, cursor)
            .await
            .unwrap();
        assert!(items.len() <= page);
        seen.extend(items);
        match next {
            Some(next) => {
                assert!(valid_cursor(&next), "a cursor the API accepts back");
                cursor = Some(next);
            }
            None => return seen,
        }
    }
    panic!("the pages never end");
}

// ---- endpoints -----------------------------------------------------------------------------

pub async fn an_endpoint_round_trips_with_its_secrets(store: &dyn OutboundStore) {
    let org = org();
    let ep = endpoint(&org);
    store.create_endpoint(&ep).await.unwrap();
    assert_eq!(
        store.get_endpoint(&org, &ep.id).await.unwrap(),
        Some(ep.clone()),
        "every field, secrets as given, round-trips"
    );
    // The optional fields the other way round.
    let bare = Endpoint {
        description: None,
        event_types: vec!["*".to_owned()],
        signature_header: "X-GitProductivity-Signature".to_owned(),
        enabled: false,
        disabled_reason: Some("the endpoint answered 410 Gone".to_owned()),
        rate_limit_per_second: None,
        previous_secret: None,
        failing_since: Some(t(5)),
        ..endpoint(&org)
    };
    store.create_endpoint(&bare).await.unwrap();
    assert_eq!(
        store.get_endpoint(&org, &bare.id).await.unwrap(),
        Some(bare)
    );
    assert_eq!(
        store
            .get_endpoint(&org, &EndpointId::generate())
            .await
            .unwrap(),
        None
    );
}

pub async fn another_orgs_endpoint_is_invisible(store: &dyn OutboundStore) {
    let (mine, theirs) = (org(), org());
    let ep = endpoint(&mine);
    store.create_endpoint(&ep).await.unwrap();
    assert_eq!(store.get_endpoint(&theirs, &ep.id).await.unwrap(), None);
    let (page, next) = store.list_endpoints(&theirs, 10, None).await.unwrap();
    assert!(page.is_empty() && next.is_none());
    assert_eq!(store.count_endpoints(&theirs).await.unwrap(), 0);
    let hijack = Endpoint {
        org_id: theirs.clone(),
        url: "https://attacker.example.com/".to_owned(),
        ..ep.clone()
    };
    assert!(matches!(
        store.update_endpoint(&hijack).await,
        Err(OutboundError::NotFound)
    ));
    assert!(!store.delete_endpoint(&theirs, &ep.id).await.unwrap());
    assert_eq!(
        store.get_endpoint(&mine, &ep.id).await.unwrap(),
        Some(ep),
        "untouched"
    );
}

pub async fn endpoints_page_oldest_first_across_pages(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    for i in [3, 0, 6, 4, 1, 5, 2] {
        let mut ep = endpoint(&org);
        // Two share a created_at: the id breaks the tie, and no page loses either.
        ep.created_at = t(if i == 4 { 3 } else { i });
        ep.description = Some(format!("endpoint {i}"));
        store.create_endpoint(&ep).await.unwrap();
    }
    store.create_endpoint(&endpoint(&other)).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let (page, next) = store.list_endpoints(&org, 3, cursor).await.unwrap();
        assert!(page.len() <= 3);
        seen.extend(page);
        pages += 1;
        assert!(pages <= 4, "the pages end");
        match next {
            Some(next) => {
                assert!(valid_cursor(&next));
                cursor = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 endpoints in pages of 3");
    assert_eq!(seen.len(), 7);
    let unique: HashSet<_> = endpoint_ids(&seen).into_iter().collect();
    assert_eq!(unique.len(), 7, "each endpoint exactly once");
    assert!(seen.iter().all(|e| e.org_id == org));
    for pair in seen.windows(2) {
        assert!(
            (pair[0].created_at, &pair[0].id) < (pair[1].created_at, &pair[1].id),
            "oldest first"
        );
    }
    let (first, next) = store.list_endpoints(&org, 1, None).await.unwrap();
    assert_eq!(first[0].description.as_deref(), Some("endpoint 0"));
    assert!(next.is_some());
    let (all, next) = store.list_endpoints(&org, 7, None).await.unwrap();
    assert_eq!(endpoint_ids(&all), endpoint_ids(&seen));
    assert!(next.is_none(), "a page that ends the list says so");
    let (none, next) = store.list_endpoints(&org, 0, None).await.unwrap();
    assert!(none.is_empty() && next.is_none());
    let (junk, next) = store
        .list_endpoints(&org, 3, Some("not-a-cursor".to_owned()))
        .await
        .unwrap();
    assert!(junk.is_empty() && next.is_none());
}

pub async fn endpoints_are_counted_per_org(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    assert_eq!(store.count_endpoints(&org).await.unwrap(), 0);
    let mut mine = Vec::new();
    for _ in 0..3 {
        let ep = endpoint(&org);
        store.create_endpoint(&ep).await.unwrap();
        mine.push(ep);
    }
    store.create_endpoint(&endpoint(&other)).await.unwrap();
    assert_eq!(store.count_endpoints(&org).await.unwrap(), 3);
    assert_eq!(store.count_endpoints(&other).await.unwrap(), 1);
    assert!(store.delete_endpoint(&org, &mine[0].id).await.unwrap());
    assert_eq!(store.count_endpoints(&org).await.unwrap(), 2);
}

pub async fn an_update_replaces_the_endpoint_and_a_missing_one_is_not_found(
    store: &dyn OutboundStore,
) {
    let org = org();
    let ep = endpoint(&org);
    store.create_endpoint(&ep).await.unwrap();
    let changed = Endpoint {
        url: "https://new-receiver.example.com/in".to_owned(),
        description: None,
        event_types: vec!["incident.*".to_owned()],
        signature_header: "X-GitProductivity-Signature".to_owned(),
        enabled: false,
        disabled_reason: Some("every attempt failed for 5 days".to_owned()),
        rate_limit_per_second: Some(2),
        secret: StoredSecret {
            sealed: "sealed-rotated".to_owned(),
            valid_until: None,
        },
        previous_secret: Some(ep.secret.clone()),
        failing_since: Some(t(10)),
        updated_at: t(20),
        ..ep.clone()
    };
    store.update_endpoint(&changed).await.unwrap();
    assert_eq!(
        store.get_endpoint(&org, &ep.id).await.unwrap(),
        Some(changed.clone())
    );
    let (listed, _) = store.list_endpoints(&org, 10, None).await.unwrap();
    assert_eq!(
        listed,
        vec![changed.clone()],
        "the list sees the new record"
    );

    let missing = Endpoint {
        id: EndpointId::generate(),
        ..changed
    };
    assert!(matches!(
        store.update_endpoint(&missing).await,
        Err(OutboundError::NotFound)
    ));
    assert_eq!(
        store.get_endpoint(&org, &missing.id).await.unwrap(),
        None,
        "an update creates nothing"
    );
    assert_eq!(store.count_endpoints(&org).await.unwrap(), 1);
}

pub async fn a_deleted_endpoint_is_gone_but_its_deliveries_stay(store: &dyn OutboundStore) {
    let org = org();
    let (ep, made) = deliveries(store, &org, 2).await;
    let d = &made[0];
    let a1 = attempt(d, 1, false);
    assert!(store.record_attempt(&after(d, &a1), &a1).await.unwrap());

    assert!(store.delete_endpoint(&org, &ep.id).await.unwrap());
    assert_eq!(store.get_endpoint(&org, &ep.id).await.unwrap(), None);
    assert!(!store.delete_endpoint(&org, &ep.id).await.unwrap(), "gone");
    let (listed, _) = store.list_endpoints(&org, 10, None).await.unwrap();
    assert!(listed.is_empty());
    assert_eq!(store.count_endpoints(&org).await.unwrap(), 0);
    assert!(matches!(
        store.update_endpoint(&ep).await,
        Err(OutboundError::NotFound)
    ));
    // History stays.
    assert!(store.get_delivery(&org, &d.id).await.unwrap().is_some());
    let by_endpoint = DeliveryFilter {
        endpoint_id: Some(ep.id.clone()),
        ..Default::default()
    };
    assert_eq!(all_deliveries(store, &org, &by_endpoint, 10).await.len(), 2);
    assert_eq!(store.list_attempts(&org, &d.id).await.unwrap(), vec![a1]);
    assert!(!store
        .delete_endpoint(&org, &EndpointId::generate())
        .await
        .unwrap());
}

// ---- the event stream ----------------------------------------------------------------------

pub async fn each_org_numbers_its_events_from_one(store: &dyn OutboundStore) {
    let (a, b) = (org(), org());
    let mut stored = Vec::new();
    for (org, want) in [(&a, 1), (&a, 2), (&b, 1), (&a, 3), (&b, 2)] {
        let new = new_event(org, "invoice.paid");
        let event = append(store, &new).await;
        assert_eq!(event.seq, want, "{org}'s stream");
        assert_eq!(
            event,
            Event {
                id: new.id.clone(),
                org_id: new.org_id.clone(),
                event_type: new.event_type.clone(),
                created_at: new.created_at,
                data: new.data.clone(),
                seq: want,
            }
        );
        stored.push(event);
    }
    for event in &stored {
        assert_eq!(
            store.get_event(&event.org_id, &event.id).await.unwrap(),
            Some(event.clone())
        );
    }
    assert_eq!(store.get_event(&b, &stored[0].id).await.unwrap(), None);
    assert_eq!(
        store.get_event(&a, &EventId::generate()).await.unwrap(),
        None
    );
    assert_eq!(
        seqs(&store.events_after(&a, 0, 10).await.unwrap()),
        [1, 2, 3]
    );
    assert_eq!(seqs(&store.events_after(&b, 0, 10).await.unwrap()), [1, 2]);
}

pub async fn publishing_an_event_id_again_returns_the_original_and_takes_no_seq(
    store: &dyn OutboundStore,
) {
    let org = org();
    let first = new_event(&org, "invoice.paid");
    let original = append(store, &first).await;
    let again = NewEvent {
        event_type: "payment_failed".to_owned(),
        created_at: t(30),
        data: serde_json::json!({"different": true}).into(),
        ..first.clone()
    };
    match store.append_event(&again).await.unwrap() {
        Appended::Existing(event) => assert_eq!(event, original, "the original, unchanged"),
        Appended::Created(_) => panic!("the same id in the same org was appended twice"),
    }
    let next = append(store, &new_event(&org, "invoice.paid")).await;
    assert_eq!(next.seq, 2, "the repeat took no seq");
    let stream = store.events_after(&org, 0, 10).await.unwrap();
    assert_eq!(stream, vec![original.clone(), next]);
    assert_eq!(
        store.get_event(&org, &first.id).await.unwrap(),
        Some(original)
    );
}

pub async fn the_same_event_id_in_another_org_is_a_new_event(store: &dyn OutboundStore) {
    let (a, b) = (org(), org());
    append(store, &new_event(&b, "invoice.paid")).await;
    let mine = new_event(&a, "invoice.paid");
    let theirs = NewEvent {
        org_id: b.clone(),
        event_type: "lead_won".to_owned(),
        data: serde_json::json!({"lead": 7}).into(),
        ..mine.clone()
    };
    let mine = append(store, &mine).await;
    let theirs = append(store, &theirs).await;
    assert_eq!((mine.seq, theirs.seq), (1, 2));
    assert_eq!(
        store.get_event(&a, &mine.id).await.unwrap(),
        Some(mine.clone())
    );
    assert_eq!(
        store.get_event(&b, &mine.id).await.unwrap(),
        Some(theirs.clone())
    );
    assert_ne!(mine.data, theirs.data);
}

pub async fn fifty_concurrent_appends_take_seqs_one_to_fifty(store: Arc<dyn OutboundStore>) {
    let org = org();
    let tasks = (0..50).map(|_| {
        let store = store.clone();
        let new = new_event(&org, "task.completed");
        tokio::spawn(async move { store.append_event(&new).await })
    });
    let mut got = Vec::new();
    for done in futures::future::join_all(tasks).await {
        match done.unwrap().unwrap() {
            Appended::Created(event) => got.push(event.seq),
            Appended::Existing(event) => panic!("a new event {} was found existing", event.id),
        }
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (1..=50).collect::<Vec<u64>>(),
        "no gaps, no duplicates"
    );
    let stream = store.events_after(&org, 0, 100).await.unwrap();
    assert_eq!(seqs(&stream), (1..=50).collect::<Vec<u64>>());
}

pub async fn of_concurrent_publishes_of_one_id_exactly_one_is_appended(
    store: Arc<dyn OutboundStore>,
) {
    let org = org();
    let new = new_event(&org, "invoice.paid");
    let tasks = (0..10).map(|_| {
        let store = store.clone();
        let new = new.clone();
        tokio::spawn(async move { store.append_event(&new).await })
    });
    let (mut created, mut existing) = (Vec::new(), Vec::new());
    for done in futures::future::join_all(tasks).await {
        match done.unwrap().unwrap() {
            Appended::Created(event) => created.push(event),
            Appended::Existing(event) => existing.push(event),
        }
    }
    assert_eq!(created.len(), 1, "exactly one publish appends");
    assert!(existing.iter().all(|e| *e == created[0]));
    assert_eq!(store.events_after(&org, 0, 100).await.unwrap(), created);
}

pub async fn events_are_read_after_a_seq_in_order_up_to_a_limit(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    for i in 0..5 {
        let mut new = new_event(&org, "invoice.paid");
        new.created_at = t(i);
        append(store, &new).await;
    }
    append(store, &new_event(&other, "invoice.paid")).await;
    assert_eq!(
        seqs(&store.events_after(&org, 0, 10).await.unwrap()),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(seqs(&store.events_after(&org, 2, 2).await.unwrap()), [3, 4]);
    assert_eq!(seqs(&store.events_after(&org, 4, 10).await.unwrap()), [5]);
    assert!(store.events_after(&org, 5, 10).await.unwrap().is_empty());
    assert!(store.events_after(&org, 0, 0).await.unwrap().is_empty());
    let all = store.events_after(&org, 0, 10).await.unwrap();
    assert!(all.iter().all(|e| e.org_id == org));
    assert!(store
        .events_after(&format!("{org}-x"), 0, 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn the_last_seq_is_the_org_s_last_event_s(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    assert_eq!(store.last_seq(&org).await.unwrap(), 0);
    for _ in 0..3 {
        append(store, &new_event(&org, "invoice.paid")).await;
    }
    assert_eq!(store.last_seq(&org).await.unwrap(), 3);
    store.advance_cursor(&org, 2).await.unwrap();
    assert_eq!(
        store.last_seq(&org).await.unwrap(),
        3,
        "the cursor is not the stream"
    );
    assert_eq!(store.last_seq(&other).await.unwrap(), 0, "per org");
    store.advance_cursor(&other, 4).await.unwrap();
    assert_eq!(
        store.last_seq(&other).await.unwrap(),
        0,
        "a cursor alone makes no events"
    );
}

pub async fn the_dispatch_cursor_starts_at_zero_and_never_goes_back(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    assert_eq!(store.dispatch_cursor(&org).await.unwrap(), 0);
    store.advance_cursor(&org, 5).await.unwrap();
    assert_eq!(store.dispatch_cursor(&org).await.unwrap(), 5);
    store.advance_cursor(&org, 3).await.unwrap();
    assert_eq!(store.dispatch_cursor(&org).await.unwrap(), 5, "never back");
    store.advance_cursor(&org, 5).await.unwrap();
    assert_eq!(store.dispatch_cursor(&org).await.unwrap(), 5);
    store.advance_cursor(&org, 7).await.unwrap();
    assert_eq!(store.dispatch_cursor(&org).await.unwrap(), 7);
    assert_eq!(store.dispatch_cursor(&other).await.unwrap(), 0, "per org");
}

pub async fn an_org_is_behind_until_its_cursor_reaches_its_last_event(store: &dyn OutboundStore) {
    let (a, b, idle) = (org(), org(), org());
    let behind = |list: Vec<String>| list.into_iter().collect::<HashSet<String>>();
    assert!(behind(store.orgs_behind(100).await.unwrap()).is_empty());
    append(store, &new_event(&a, "invoice.paid")).await;
    append(store, &new_event(&a, "invoice.paid")).await;
    append(store, &new_event(&b, "invoice.paid")).await;
    // An org whose cursor moved without events has nothing to do.
    store.advance_cursor(&idle, 3).await.unwrap();
    assert_eq!(
        behind(store.orgs_behind(100).await.unwrap()),
        behind(vec![a.clone(), b.clone()])
    );
    assert_eq!(store.orgs_behind(1).await.unwrap().len(), 1, "the limit");
    store.advance_cursor(&a, 1).await.unwrap();
    assert!(behind(store.orgs_behind(100).await.unwrap()).contains(&a));
    store.advance_cursor(&a, 2).await.unwrap();
    assert_eq!(
        behind(store.orgs_behind(100).await.unwrap()),
        behind(vec![b.clone()])
    );
    store.advance_cursor(&b, 1).await.unwrap();
    assert!(store.orgs_behind(100).await.unwrap().is_empty());
    // A new event puts the org behind again.
    append(store, &new_event(&a, "invoice.paid")).await;
    assert_eq!(store.orgs_behind(100).await.unwrap(), vec![a.clone()]);
    store.advance_cursor(&a, 3).await.unwrap();
    assert!(store.orgs_behind(100).await.unwrap().is_empty());
}

// ---- deliveries ----------------------------------------------------------------------------

pub async fn a_delivery_is_created_once_per_endpoint_and_event(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    let ep = endpoint(&org);
    store.create_endpoint(&ep).await.unwrap();
    let event = append(store, &new_event(&org, "invoice.paid")).await;
    let d = delivery_for(&ep, &event);
    assert!(store.create_delivery(&d).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(d.clone())
    );
    // A rerun of the dispatcher names the same record and changes nothing.
    let rerun = Delivery {
        status: DeliveryStatus::DeadLettered,
        attempts: 3,
        created_at: t(99),
        ..d.clone()
    };
    assert!(!store.create_delivery(&rerun).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(d.clone())
    );
    assert_eq!(store.get_delivery(&other, &d.id).await.unwrap(), None);
    let (theirs, next) = store
        .list_deliveries(&other, &DeliveryFilter::default(), 10, None)
        .await
        .unwrap();
    assert!(theirs.is_empty() && next.is_none());
    // The next event to the same endpoint is another delivery.
    let second = append(store, &new_event(&org, "invoice.paid")).await;
    assert!(store
        .create_delivery(&delivery_for(&ep, &second))
        .await
        .unwrap());
    let (all, _) = store
        .list_deliveries(&org, &DeliveryFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        store
            .get_delivery(
                &org,
                &DeliveryId::for_pair(&ep.id, &EventId::generate(), t(0))
            )
            .await
            .unwrap(),
        None
    );
}

pub async fn of_twenty_concurrent_creates_of_one_delivery_exactly_one_wins(
    store: Arc<dyn OutboundStore>,
) {
    let org = org();
    let ep = endpoint(&org);
    store.create_endpoint(&ep).await.unwrap();
    let event = append(&*store, &new_event(&org, "invoice.paid")).await;
    let d = delivery_for(&ep, &event);
    let tasks = (0..20).map(|_| {
        let store = store.clone();
        let d = d.clone();
        tokio::spawn(async move { store.create_delivery(&d).await })
    });
    let mut won = 0;
    for done in futures::future::join_all(tasks).await {
        if done.unwrap().unwrap() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one create wins");
    let (all, _) = store
        .list_deliveries(&org, &DeliveryFilter::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(all, vec![d]);
}

pub async fn a_batch_of_deliveries_is_created_once_each_and_a_rerun_creates_only_the_missing(
    store: &dyn OutboundStore,
) {
    let org = org();
    let ep = endpoint(&org);
    store.create_endpoint(&ep).await.unwrap();
    let mut batch = Vec::new();
    for _ in 0..5 {
        let event = append(store, &new_event(&org, "invoice.paid")).await;
        batch.push(delivery_for(&ep, &event));
    }
    // Two of them exist already (a run that stopped half-way made them).
    assert!(store.create_delivery(&batch[1]).await.unwrap());
    assert!(store.create_delivery(&batch[3]).await.unwrap());
    assert_eq!(
        store.create_deliveries(&batch).await.unwrap(),
        vec![true, false, true, false, true]
    );
    assert_eq!(
        store.create_deliveries(&batch).await.unwrap(),
        vec![false; 5],
        "a rerun creates nothing"
    );
    assert_eq!(
        store.create_deliveries(&[]).await.unwrap(),
        Vec::<bool>::new()
    );
    let (all, _) = store
        .list_deliveries(&org, &DeliveryFilter::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);
    for d in &batch {
        assert_eq!(
            store.get_delivery(&org, &d.id).await.unwrap().as_ref(),
            Some(d)
        );
    }
}

pub async fn deliveries_list_newest_first_and_narrow_by_every_filter(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    let (ep1, ep2) = (endpoint(&org), endpoint(&org));
    store.create_endpoint(&ep1).await.unwrap();
    store.create_endpoint(&ep2).await.unwrap();
    let paid = append(store, &new_event(&org, "invoice.paid")).await;
    let push = append(store, &new_event(&org, "github.push")).await;
    let paid_again = append(store, &new_event(&org, "invoice.paid")).await;
    // (endpoint, event, created at, status)
    let plan = [
        (&ep1, &paid, 10, DeliveryStatus::Delivered),
        (&ep2, &paid, 11, DeliveryStatus::Failed),
        (&ep1, &push, 12, DeliveryStatus::Pending),
        (&ep1, &paid_again, 13, DeliveryStatus::DeadLettered),
        (&ep2, &paid_again, 14, DeliveryStatus::Delivered),
    ];
    let mut made = Vec::new();
    for (ep, event, at, status) in plan {
        let d = Delivery {
            status,
            created_at: t(at),
            updated_at: t(at),
            ..delivery_for(ep, event)
        };
        assert!(store.create_delivery(&d).await.unwrap());
        made.push(d);
    }
    let theirs_ep = endpoint(&other);
    store.create_endpoint(&theirs_ep).await.unwrap();
    let theirs_event = append(store, &new_event(&other, "invoice.paid")).await;
    let theirs = delivery_for(&theirs_ep, &theirs_event);
    assert!(store.create_delivery(&theirs).await.unwrap());

    // The indexes of `made` a filter selects, newest first.
    let want = |picks: &[usize]| -> Vec<DeliveryId> {
        let mut ids: Vec<_> = picks.iter().map(|&i| made[i].clone()).collect();
        ids.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        delivery_ids(&ids)
    };
    let cases: Vec<(&str, DeliveryFilter, Vec<usize>)> = vec![
        ("no filter", DeliveryFilter::default(), vec![0, 1, 2, 3, 4]),
        (
            "endpoint_id",
            DeliveryFilter {
                endpoint_id: Some(ep2.id.clone()),
                ..Default::default()
            },
            vec![1, 4],
        ),
        (
            "event_id",
            DeliveryFilter {
                event_id: Some(paid.id.clone()),
                ..Default::default()
            },
            vec![0, 1],
        ),
        (
            "status",
            DeliveryFilter {
                status: Some(DeliveryStatus::Delivered),
                ..Default::default()
            },
            vec![0, 4],
        ),
        (
            "event_type",
            DeliveryFilter {
                event_type: Some("invoice.paid".to_owned()),
                ..Default::default()
            },
            vec![0, 1, 3, 4],
        ),
        (
            "since (inclusive)",
            DeliveryFilter {
                since: Some(t(12)),
                ..Default::default()
            },
            vec![2, 3, 4],
        ),
        (
            "endpoint_id and status",
            DeliveryFilter {
                endpoint_id: Some(ep1.id.clone()),
                status: Some(DeliveryStatus::DeadLettered),
                ..Default::default()
            },
            vec![3],
        ),
        (
            "endpoint_id, event_type and since",
            DeliveryFilter {
                endpoint_id: Some(ep1.id.clone()),
                event_type: Some("invoice.paid".to_owned()),
                since: Some(t(11)),
                ..Default::default()
            },
            vec![3],
        ),
        (
            "a status none has",
            DeliveryFilter {
                endpoint_id: Some(ep2.id.clone()),
                status: Some(DeliveryStatus::Pending),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (name, filter, picks) in cases {
        for page in [1, 2, 10] {
            let got = all_deliveries(store, &org, &filter, page).await;
            assert_eq!(delivery_ids(&got), want(&picks), "{name}, pages of {page}");
        }
    }
    let (all, _) = store
        .list_deliveries(&org, &DeliveryFilter::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(all[0], made[4], "whole records come back");
    // Another org's endpoint or event finds nothing here, nor ours there.
    for filter in [
        DeliveryFilter {
            endpoint_id: Some(theirs_ep.id.clone()),
            ..Default::default()
        },
        DeliveryFilter {
            event_id: Some(theirs_event.id.clone()),
            ..Default::default()
        },
    ] {
        assert!(all_deliveries(store, &org, &filter, 10).await.is_empty());
    }
    let ours = DeliveryFilter {
        endpoint_id: Some(ep1.id.clone()),
        ..Default::default()
    };
    assert!(all_deliveries(store, &other, &ours, 10).await.is_empty());
    assert_eq!(
        delivery_ids(&all_deliveries(store, &other, &DeliveryFilter::default(), 10).await),
        vec![theirs.id]
    );
}

pub async fn deliveries_page_newest_first_across_pages(store: &dyn OutboundStore) {
    let org = org();
    let ep = endpoint(&org);
    store.create_endpoint(&ep).await.unwrap();
    let mut made = Vec::new();
    for i in [3, 0, 6, 4, 1, 5, 2] {
        let event = append(store, &new_event(&org, "invoice.paid")).await;
        // Two share a created_at: the id breaks the tie, and no page loses either.
        let at = t(if i == 4 { 3 } else { i });
        let d = Delivery {
            created_at: at,
            updated_at: at,
            ..delivery_for(&ep, &event)
        };
        assert!(store.create_delivery(&d).await.unwrap());
        made.push(d);
    }
    let filter = DeliveryFilter::default();
    let mut pages = 0;
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = store
            .list_deliveries(&org, &filter, 3, cursor)
            .await
            .unwrap();
        seen.extend(page);
        pages += 1;
        assert!(pages <= 4, "the pages end");
        match next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(pages, 3, "7 deliveries in pages of 3");
    let unique: HashSet<_> = delivery_ids(&seen).into_iter().collect();
    assert_eq!(unique.len(), 7, "each delivery exactly once");
    for pair in seen.windows(2) {
        assert!(
            (pair[0].created_at, &pair[0].id) > (pair[1].created_at, &pair[1].id),
            "newest first"
        );
    }
    assert_eq!(seen[0].created_at, t(6));
    let (none, next) = store.list_deliveries(&org, &filter, 0, None).await.unwrap();
    assert!(none.is_empty() && next.is_none());
    let (junk, next) = store
        .list_deliveries(&org, &filter, 3, Some("not-a-cursor".to_owned()))
        .await
        .unwrap();
    assert!(junk.is_empty() && next.is_none());
}

// ---- claims, attempts and updates ----------------------------------------------------------

pub async fn a_delivery_is_claimed_only_for_its_next_attempt_and_while_no_lease_is_live(
    store: &dyn OutboundStore,
) {
    let org = org();
    let (_, made) = deliveries(store, &org, 1).await;
    let d = &made[0];
    assert_eq!(
        store.claim_delivery(&d.id, 1, t(100), t(0)).await.unwrap(),
        None,
        "attempt 2 is not next"
    );
    let claimed = store
        .claim_delivery(&d.id, 0, t(100), t(0))
        .await
        .unwrap()
        .expect("attempt 1 is next and nobody holds it");
    assert_eq!(
        claimed,
        Delivery {
            lease_until: Some(t(100)),
            ..d.clone()
        },
        "the delivery as it now is"
    );
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(claimed)
    );
    assert_eq!(
        store.claim_delivery(&d.id, 0, t(200), t(50)).await.unwrap(),
        None,
        "another deliverer's lease is live"
    );
    let taken_over = store
        .claim_delivery(&d.id, 0, t(300), t(150))
        .await
        .unwrap()
        .expect("an expired lease can be taken over");
    assert_eq!(taken_over.lease_until, Some(t(300)));

    // Once attempt 1 is recorded (which clears the lease), only attempt 2 can be claimed.
    let a1 = attempt(d, 1, false);
    assert!(store.record_attempt(&after(d, &a1), &a1).await.unwrap());
    assert_eq!(
        store
            .claim_delivery(&d.id, 0, t(400), t(160))
            .await
            .unwrap(),
        None,
        "attempt 1 was made"
    );
    let second = store
        .claim_delivery(&d.id, 1, t(400), t(160))
        .await
        .unwrap()
        .expect("the recorded attempt released the lease");
    assert_eq!((second.attempts, second.lease_until), (1, Some(t(400))));
    assert_eq!(
        store
            .claim_delivery(
                &DeliveryId::for_pair(&EndpointId::generate(), &EventId::generate(), t(0)),
                0,
                t(100),
                t(0)
            )
            .await
            .unwrap(),
        None,
        "no such delivery"
    );
}

pub async fn of_concurrent_claims_exactly_one_wins(store: Arc<dyn OutboundStore>) {
    let org = org();
    let (_, made) = deliveries(&*store, &org, 1).await;
    let id = made[0].id.clone();
    let tasks = (0..10).map(|_| {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move { store.claim_delivery(&id, 0, t(100), t(0)).await })
    });
    let mut won = 0;
    for done in futures::future::join_all(tasks).await {
        if done.unwrap().unwrap().is_some() {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one deliverer takes the delivery");
}

pub async fn an_attempt_is_recorded_once_and_a_redo_changes_nothing(store: &dyn OutboundStore) {
    let org = org();
    let (_, made) = deliveries(store, &org, 1).await;
    let d = &made[0];
    store
        .claim_delivery(&d.id, 0, t(100), t(0))
        .await
        .unwrap()
        .expect("claimed");
    let a1 = attempt(d, 1, false);
    let d1 = after(d, &a1);
    assert!(store.record_attempt(&d1, &a1).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(d1.clone())
    );
    assert_eq!(
        store.list_attempts(&org, &d.id).await.unwrap(),
        vec![a1.clone()]
    );

    // A deliverer that redoes attempt 1 (it lost its lease, or its message came twice).
    let redo = Attempt {
        id: AttemptId::generate(),
        ..attempt(d, 1, true)
    };
    assert!(!store.record_attempt(&after(d, &redo), &redo).await.unwrap());
    // Attempt 3 before attempt 2 is not the next one either.
    let early = attempt(&d1, 3, true);
    assert!(!store
        .record_attempt(&after(&d1, &early), &early)
        .await
        .unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(d1.clone()),
        "nothing changed"
    );
    assert_eq!(
        store.list_attempts(&org, &d.id).await.unwrap(),
        vec![a1.clone()]
    );

    let a2 = attempt(&d1, 2, true);
    let d2 = after(&d1, &a2);
    assert!(store.record_attempt(&d2, &a2).await.unwrap());
    assert_eq!(store.get_delivery(&org, &d.id).await.unwrap(), Some(d2));
    assert_eq!(
        store.list_attempts(&org, &d.id).await.unwrap(),
        vec![a1, a2]
    );

    let missing = Delivery {
        id: DeliveryId::for_pair(&EndpointId::generate(), &EventId::generate(), t(0)),
        ..d.clone()
    };
    let orphan = attempt(&missing, 1, true);
    assert!(
        !store
            .record_attempt(&after(&missing, &orphan), &orphan)
            .await
            .unwrap(),
        "no attempt at a delivery that does not exist"
    );
    assert!(store
        .list_attempts(&org, &missing.id)
        .await
        .unwrap()
        .is_empty());
}

pub async fn attempts_are_listed_oldest_first_and_only_to_their_org(store: &dyn OutboundStore) {
    let (org, other) = (org(), org());
    let (_, made) = deliveries(store, &org, 2).await;
    let mut current = made[0].clone();
    let mut recorded = Vec::new();
    for number in 1..=4 {
        let mut a = attempt(&current, number, number == 4);
        if number == 3 {
            a.status_code = None;
            a.response_body = None;
            a.error = Some("timed out after 30s".to_owned());
            a.trigger = AttemptTrigger::Manual;
        }
        let next = after(&current, &a);
        assert!(store.record_attempt(&next, &a).await.unwrap());
        recorded.push(a);
        current = next;
    }
    assert_eq!(
        store.list_attempts(&org, &made[0].id).await.unwrap(),
        recorded
    );
    assert!(store
        .list_attempts(&org, &made[1].id)
        .await
        .unwrap()
        .is_empty());
    assert!(
        store
            .list_attempts(&other, &made[0].id)
            .await
            .unwrap()
            .is_empty(),
        "another org's delivery has none"
    );
}

pub async fn a_delivery_update_applies_only_over_the_attempts_it_read(store: &dyn OutboundStore) {
    let org = org();
    let (_, made) = deliveries(store, &org, 1).await;
    let d = &made[0];
    let rescheduled = Delivery {
        next_attempt_at: Some(t(900)),
        updated_at: t(5),
        ..d.clone()
    };
    assert!(store.update_delivery(&rescheduled).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(rescheduled.clone())
    );

    let a1 = attempt(d, 1, false);
    let d1 = after(&rescheduled, &a1);
    assert!(store.record_attempt(&d1, &a1).await.unwrap());
    // Read before attempt 1 was recorded: stale, refused.
    let stale = Delivery {
        status: DeliveryStatus::DeadLettered,
        last_error: Some("the endpoint was deleted".to_owned()),
        ..rescheduled.clone()
    };
    assert!(!store.update_delivery(&stale).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(d1.clone())
    );

    let dead = Delivery {
        status: DeliveryStatus::DeadLettered,
        next_attempt_at: None,
        last_error: Some("the endpoint was deleted".to_owned()),
        updated_at: t(500),
        ..d1.clone()
    };
    assert!(store.update_delivery(&dead).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &d.id).await.unwrap(),
        Some(dead.clone())
    );
    // The status filter follows the change.
    let with = |status| DeliveryFilter {
        status: Some(status),
        ..Default::default()
    };
    assert_eq!(
        delivery_ids(&all_deliveries(store, &org, &with(DeliveryStatus::DeadLettered), 10).await),
        vec![d.id.clone()]
    );
    for gone in [DeliveryStatus::Pending, DeliveryStatus::Failed] {
        assert!(all_deliveries(store, &org, &with(gone), 10)
            .await
            .is_empty());
    }

    let missing = Delivery {
        id: DeliveryId::for_pair(&EndpointId::generate(), &EventId::generate(), t(0)),
        ..d.clone()
    };
    assert!(!store.update_delivery(&missing).await.unwrap());
    assert_eq!(
        store.get_delivery(&org, &missing.id).await.unwrap(),
        None,
        "an update creates nothing"
    );
}

// ---- send slots ----------------------------------------------------------------------------

pub async fn each_second_gives_exactly_the_limit_of_sends_per_endpoint(store: &dyn OutboundStore) {
    let (a, b) = (EndpointId::generate(), EndpointId::generate());
    let second = t(0).timestamp();
    let mut taken = Vec::new();
    for _ in 0..5 {
        taken.push(store.take_send_slot(&a, second, 3).await.unwrap());
    }
    assert_eq!(taken, [true, true, true, false, false]);
    for _ in 0..3 {
        assert!(
            store.take_send_slot(&b, second, 3).await.unwrap(),
            "per endpoint"
        );
    }
    assert!(!store.take_send_slot(&b, second, 3).await.unwrap());
    for _ in 0..3 {
        assert!(
            store.take_send_slot(&a, second + 1, 3).await.unwrap(),
            "a new second starts fresh"
        );
    }
    assert!(!store.take_send_slot(&a, second + 1, 3).await.unwrap());
    assert!(
        !store.take_send_slot(&a, second + 2, 0).await.unwrap(),
        "a limit of 0"
    );
}

pub async fn thirty_concurrent_senders_share_ten_slots_exactly(store: Arc<dyn OutboundStore>) {
    let ep = EndpointId::generate();
    let second = t(0).timestamp();
    let tasks = (0..30).map(|_| {
        let store = store.clone();
        let ep = ep.clone();
        tokio::spawn(async move { store.take_send_slot(&ep, second, 10).await })
    });
    let mut granted = 0;
    for done in futures::future::join_all(tasks).await {
        if done.unwrap().unwrap() {
            granted += 1;
        }
    }
    assert_eq!(granted, 10, "exactly the limit, across every deliverer");
    assert!(store.take_send_slot(&ep, second + 1, 10).await.unwrap());
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn OutboundStore>)` for a fresh, empty store; the guard lives for
/// the test (a temp dir, a table).
#[macro_export]
macro_rules! outbound_conformance {
    ($make:expr) => {
        mod outbound_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::outbound::conformance as c;

            macro_rules! case {
                ($name:ident, $takes:ident) => {
                    $crate::conformance_case!($make, $name, $takes);
                };
            }

            case!(an_endpoint_round_trips_with_its_secrets, borrowed);
            case!(another_orgs_endpoint_is_invisible, borrowed);
            case!(endpoints_page_oldest_first_across_pages, borrowed);
            case!(endpoints_are_counted_per_org, borrowed);
            case!(
                an_update_replaces_the_endpoint_and_a_missing_one_is_not_found,
                borrowed
            );
            case!(a_deleted_endpoint_is_gone_but_its_deliveries_stay, borrowed);
            case!(each_org_numbers_its_events_from_one, borrowed);
            case!(
                publishing_an_event_id_again_returns_the_original_and_takes_no_seq,
                borrowed
            );
            case!(the_same_event_id_in_another_org_is_a_new_event, borrowed);
            case!(fifty_concurrent_appends_take_seqs_one_to_fifty, shared);
            case!(
                of_concurrent_publishes_of_one_id_exactly_one_is_appended,
                shared
            );
            case!(events_are_read_after_a_seq_in_order_up_to_a_limit, borrowed);
            case!(the_last_seq_is_the_org_s_last_event_s, borrowed);
            case!(
                the_dispatch_cursor_starts_at_zero_and_never_goes_back,
                borrowed
            );
            case!(
                an_org_is_behind_until_its_cursor_reaches_its_last_event,
                borrowed
            );
            case!(a_delivery_is_created_once_per_endpoint_and_event, borrowed);
            case!(
                a_batch_of_deliveries_is_created_once_each_and_a_rerun_creates_only_the_missing,
                borrowed
            );
            case!(
                of_twenty_concurrent_creates_of_one_delivery_exactly_one_wins,
                shared
            );
            case!(
                deliveries_list_newest_first_and_narrow_by_every_filter,
                borrowed
            );
            case!(deliveries_page_newest_first_across_pages, borrowed);
            case!(
                a_delivery_is_claimed_only_for_its_next_attempt_and_while_no_lease_is_live,
                borrowed
            );
            case!(of_concurrent_claims_exactly_one_wins, shared);
            case!(
                an_attempt_is_recorded_once_and_a_redo_changes_nothing,
                borrowed
            );
            case!(
                attempts_are_listed_oldest_first_and_only_to_their_org,
                borrowed
            );
            case!(
                a_delivery_update_applies_only_over_the_attempts_it_read,
                borrowed
            );
            case!(
                each_second_gives_exactly_the_limit_of_sends_per_endpoint,
                borrowed
            );
            case!(thirty_concurrent_senders_share_ten_slots_exactly, shared);
        }
    };
}
