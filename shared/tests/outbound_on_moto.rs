//! The DynamoDB outbound store against moto: the outbound-store conformance suite over the
//! real DynamoDB wire protocol, each test on a fresh table made as the SAM template makes it,
//! plus the few things only this adapter has (its item layout under concurrent Lambdas).
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test outbound_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test fails, it never skips.

use chrono::{DateTime, Duration, Utc};
use hookline::connections::StoredSecret;
use hookline::outbound::model::{
    Attempt, AttemptId, AttemptTrigger, Delivery, DeliveryId, DeliveryStatus, Endpoint, EndpointId,
    EventId, NewEvent, DEFAULT_SIGNATURE_HEADER,
};
use hookline::ports::outbound::aws::DynamoOutboundStore;
use hookline::ports::outbound::{Appended, DeliveryFilter, OutboundStore};
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use std::collections::HashSet;
use std::sync::Arc;

async fn fresh_store() -> ((), Arc<dyn OutboundStore>) {
    let mut lambdas = lambdas(1).await;
    ((), lambdas.remove(0))
}

/// `n` stores on one fresh table, each with its own client, as `n` Lambdas would have.
async fn lambdas(n: usize) -> Vec<Arc<dyn OutboundStore>> {
    let config = sdk_config_for(Some(&moto_endpoint())).await;
    let table = format!("hookline-outbound-{}", uuid::Uuid::new_v4());
    create_table(&aws_sdk_dynamodb::Client::new(&config), &table)
        .await
        .expect("create the test table in moto");
    (0..n)
        .map(|_| {
            let client = aws_sdk_dynamodb::Client::new(&config);
            Arc::new(DynamoOutboundStore::new(client, &table)) as Arc<dyn OutboundStore>
        })
        .collect()
}

hookline::outbound_conformance!(fresh_store());

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

fn endpoint(org: &str, secs: i64) -> Endpoint {
    Endpoint {
        id: EndpointId::generate(),
        org_id: org.to_owned(),
        url: "https://hooks.example.com/in".to_owned(),
        description: None,
        event_types: vec!["invoice.paid".to_owned()],
        signature_header: DEFAULT_SIGNATURE_HEADER.to_owned(),
        enabled: true,
        disabled_reason: None,
        rate_limit_per_second: None,
        secret: StoredSecret {
            sealed: "sealed-secret".to_owned(),
            valid_until: None,
        },
        previous_secret: None,
        failing_since: None,
        created_at: at(secs),
        updated_at: at(secs),
    }
}

fn new_event(org: &str, id: &str) -> NewEvent {
    NewEvent {
        id: EventId::parse(id).unwrap(),
        org_id: org.to_owned(),
        event_type: "invoice.paid".to_owned(),
        created_at: at(0),
        data: serde_json::json!({"amount": 5}).into(),
    }
}

fn delivery(org: &str, ep: &EndpointId, event: &str, secs: i64) -> Delivery {
    let event_id = EventId::parse(event).unwrap();
    Delivery {
        id: DeliveryId::for_pair(ep, &event_id, at(0)),
        org_id: org.to_owned(),
        endpoint_id: ep.clone(),
        event_id,
        event_type: "invoice.paid".to_owned(),
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: Some(at(secs)),
        last_attempt_at: None,
        last_status_code: None,
        last_error: None,
        lease_until: None,
        created_at: at(secs),
        updated_at: at(secs),
    }
}

fn attempt(d: &Delivery, number: u32) -> Attempt {
    Attempt {
        id: AttemptId::generate(),
        delivery_id: d.id.clone(),
        org_id: d.org_id.clone(),
        endpoint_id: d.endpoint_id.clone(),
        number,
        at: at(10),
        url: "https://hooks.example.com/in".to_owned(),
        status_code: Some(500),
        duration_ms: 12,
        response_body: Some("oops".to_owned()),
        error: Some("status 500".to_owned()),
        succeeded: false,
        trigger: AttemptTrigger::Scheduled,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_from_many_lambdas_number_the_stream_without_gaps() {
    let lambdas = lambdas(8).await;
    let store = lambdas[0].clone();
    let appends = (0..24).map(|i| {
        let store = lambdas[i % lambdas.len()].clone();
        tokio::spawn(async move {
            store
                .append_event(&new_event("org-a", &format!("e{i}")))
                .await
        })
    });
    let mut seqs: Vec<u64> = Vec::new();
    for done in futures::future::join_all(appends).await {
        match done.unwrap().unwrap() {
            Appended::Created(e) => seqs.push(e.seq),
            Appended::Existing(e) => panic!("{} was new", e.id),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=24).collect::<Vec<_>>());
    let events = store.events_after("org-a", 0, 100).await.unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<_>>()
    );
    assert_eq!(store.events_after("org-a", 20, 100).await.unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_republished_id_racing_itself_creates_one_event() {
    let lambdas = lambdas(8).await;
    let store = lambdas[0].clone();
    let appends = lambdas.iter().map(|lambda| {
        let store = lambda.clone();
        tokio::spawn(async move { store.append_event(&new_event("org-a", "order-42")).await })
    });
    let outcomes: Vec<Appended> = futures::future::join_all(appends)
        .await
        .into_iter()
        .map(|done| done.unwrap().unwrap())
        .collect();
    let created = outcomes
        .iter()
        .filter(|o| matches!(o, Appended::Created(_)))
        .count();
    assert_eq!(created, 1);
    assert!(outcomes.iter().all(|o| o.event().seq == 1));
    // Another org's event with the same id is another event.
    let other = store
        .append_event(&new_event("org-b", "order-42"))
        .await
        .unwrap();
    assert!(matches!(other, Appended::Created(ref e) if e.seq == 1));
    assert_eq!(store.events_after("org-a", 0, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_org_leaves_the_behind_list_only_when_its_cursor_reaches_the_end() {
    let (_, store) = fresh_store().await;
    for i in 0..3 {
        store
            .append_event(&new_event("org#a", &format!("e{i}")))
            .await
            .unwrap();
    }
    store.append_event(&new_event("org-b", "e0")).await.unwrap();
    let behind: HashSet<String> = store.orgs_behind(10).await.unwrap().into_iter().collect();
    assert_eq!(
        behind,
        HashSet::from(["org#a".to_owned(), "org-b".to_owned()])
    );
    assert_eq!(store.orgs_behind(1).await.unwrap().len(), 1);

    store.advance_cursor("org#a", 2).await.unwrap();
    assert!(store
        .orgs_behind(10)
        .await
        .unwrap()
        .contains(&"org#a".to_owned()));
    store.advance_cursor("org#a", 3).await.unwrap();
    store.advance_cursor("org#a", 1).await.unwrap();
    assert_eq!(store.dispatch_cursor("org#a").await.unwrap(), 3);
    assert_eq!(
        store.orgs_behind(10).await.unwrap(),
        vec!["org-b".to_owned()]
    );

    // A new event puts it back.
    store.append_event(&new_event("org#a", "e9")).await.unwrap();
    assert!(store
        .orgs_behind(10)
        .await
        .unwrap()
        .contains(&"org#a".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_dispatchers_exactly_one_creates_each_delivery() {
    let (_, store) = fresh_store().await;
    let ep = EndpointId::generate();
    let creates = (0..8).map(|_| {
        let store = store.clone();
        let d = delivery("org-a", &ep, "e1", 0);
        tokio::spawn(async move { store.create_delivery(&d).await })
    });
    let created = futures::future::join_all(creates)
        .await
        .into_iter()
        .filter(|done| *done.as_ref().unwrap().as_ref().unwrap())
        .count();
    assert_eq!(created, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claimed_delivery_is_leased_and_a_recorded_attempt_is_written_once() {
    let (_, store) = fresh_store().await;
    let ep = EndpointId::generate();
    let d = delivery("org-a", &ep, "e1", 0);
    assert!(store.create_delivery(&d).await.unwrap());

    let claims = (0..6).map(|_| {
        let store = store.clone();
        let id = d.id.clone();
        tokio::spawn(async move { store.claim_delivery(&id, 0, at(60), at(0)).await })
    });
    let won: Vec<Delivery> = futures::future::join_all(claims)
        .await
        .into_iter()
        .filter_map(|done| done.unwrap().unwrap())
        .collect();
    assert_eq!(won.len(), 1, "one deliverer takes it");
    assert_eq!(won[0].lease_until, Some(at(60)));
    // The lease runs out: another deliverer may take it.
    assert!(store
        .claim_delivery(&d.id, 0, at(200), at(100))
        .await
        .unwrap()
        .is_some());

    let after = Delivery {
        status: DeliveryStatus::Failed,
        attempts: 1,
        last_status_code: Some(500),
        next_attempt_at: Some(at(160)),
        ..won[0].clone()
    };
    assert!(store
        .record_attempt(&after, &attempt(&after, 1))
        .await
        .unwrap());
    assert!(!store
        .record_attempt(&after, &attempt(&after, 1))
        .await
        .unwrap());
    let stored = store.get_delivery("org-a", &d.id).await.unwrap().unwrap();
    assert_eq!(stored.attempts, 1);
    assert_eq!(stored.lease_until, None);
    assert_eq!(stored.status, DeliveryStatus::Failed);
    assert_eq!(store.list_attempts("org-a", &d.id).await.unwrap().len(), 1);
    assert!(store
        .list_attempts("org-b", &d.id)
        .await
        .unwrap()
        .is_empty());
    assert!(store.get_delivery("org-b", &d.id).await.unwrap().is_none());
    // The next attempt is claimable; the one already made is not.
    assert!(store
        .claim_delivery(&d.id, 0, at(300), at(250))
        .await
        .unwrap()
        .is_none());
    assert!(store
        .claim_delivery(&d.id, 1, at(300), at(250))
        .await
        .unwrap()
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliverers_share_an_endpoints_sends_per_second() {
    let (_, store) = fresh_store().await;
    let ep = EndpointId::generate();
    let takes = (0..20).map(|_| {
        let store = store.clone();
        let ep = ep.clone();
        tokio::spawn(async move { store.take_send_slot(&ep, 1_800_000_000, 7).await })
    });
    let taken = futures::future::join_all(takes)
        .await
        .into_iter()
        .filter(|done| *done.as_ref().unwrap().as_ref().unwrap())
        .count();
    assert_eq!(taken, 7);
    assert!(store.take_send_slot(&ep, 1_800_000_001, 7).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_are_counted_listed_oldest_first_and_kept_to_their_org() {
    let (_, store) = fresh_store().await;
    let mut made = Vec::new();
    for i in 0..5 {
        let e = endpoint("org#a", i);
        store.create_endpoint(&e).await.unwrap();
        made.push(e);
    }
    store.create_endpoint(&endpoint("org", 0)).await.unwrap();
    assert_eq!(store.count_endpoints("org#a").await.unwrap(), 5);
    let (first, next) = store.list_endpoints("org#a", 2, None).await.unwrap();
    assert_eq!(first, made[..2].to_vec());
    let (rest, last) = store.list_endpoints("org#a", 10, next).await.unwrap();
    assert_eq!(rest, made[2..].to_vec());
    assert_eq!(last, None);
    assert!(store
        .get_endpoint("org", &made[0].id)
        .await
        .unwrap()
        .is_none());
    assert!(!store.delete_endpoint("org", &made[0].id).await.unwrap());
    assert!(store.delete_endpoint("org#a", &made[0].id).await.unwrap());
    assert_eq!(store.count_endpoints("org#a").await.unwrap(), 4);
    let moved = Endpoint {
        created_at: at(0) + Duration::seconds(100),
        ..made[1].clone()
    };
    store.update_endpoint(&moved).await.unwrap();
    let foreign = Endpoint {
        org_id: "org".to_owned(),
        ..made[2].clone()
    };
    assert!(store.update_endpoint(&foreign).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deliveries_are_listed_newest_first_by_page_and_narrowed_by_every_filter() {
    let (_, store) = fresh_store().await;
    let (ep1, ep2) = (EndpointId::generate(), EndpointId::generate());
    let mut made = Vec::new();
    for i in 0..6 {
        let ep = if i % 2 == 0 { &ep1 } else { &ep2 };
        let mut d = delivery("org#a", ep, &format!("e{i}"), i);
        if i == 3 {
            d.status = DeliveryStatus::DeadLettered;
            d.event_type = "lead_won".to_owned();
        }
        assert!(store.create_delivery(&d).await.unwrap());
        made.push(d);
    }
    store
        .create_delivery(&delivery("org", &ep1, "e0", 0))
        .await
        .unwrap();
    let newest_first: Vec<Delivery> = made.iter().rev().cloned().collect();

    let all = DeliveryFilter::default();
    let (first, next) = store.list_deliveries("org#a", &all, 4, None).await.unwrap();
    assert_eq!(first, newest_first[..4].to_vec());
    let (rest, last) = store.list_deliveries("org#a", &all, 4, next).await.unwrap();
    assert_eq!(rest, newest_first[4..].to_vec());
    assert_eq!(last, None);

    let ids = |page: Vec<Delivery>| page.into_iter().map(|d| d.id).collect::<Vec<_>>();
    let by = |filter: DeliveryFilter| {
        let store = store.clone();
        async move {
            let (page, _) = store
                .list_deliveries("org#a", &filter, 100, None)
                .await
                .unwrap();
            page
        }
    };
    let on_ep1 = by(DeliveryFilter {
        endpoint_id: Some(ep1.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(on_ep1),
        vec![made[4].id.clone(), made[2].id.clone(), made[0].id.clone()]
    );
    for filter in [
        DeliveryFilter {
            status: Some(DeliveryStatus::DeadLettered),
            ..Default::default()
        },
        DeliveryFilter {
            event_type: Some("lead_won".to_owned()),
            ..Default::default()
        },
        DeliveryFilter {
            event_id: Some(EventId::parse("e3").unwrap()),
            endpoint_id: Some(ep2.clone()),
            ..Default::default()
        },
    ] {
        assert_eq!(ids(by(filter).await), vec![made[3].id.clone()]);
    }
    let since = by(DeliveryFilter {
        since: Some(at(4)),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(since), vec![made[5].id.clone(), made[4].id.clone()]);
    // Filtered pages go on from their cursor too.
    let narrowed = DeliveryFilter {
        endpoint_id: Some(ep2.clone()),
        ..Default::default()
    };
    let (one, next) = store
        .list_deliveries("org#a", &narrowed, 1, None)
        .await
        .unwrap();
    let (two, _) = store
        .list_deliveries("org#a", &narrowed, 1, next)
        .await
        .unwrap();
    assert_eq!(ids(one), vec![made[5].id.clone()]);
    assert_eq!(ids(two), vec![made[3].id.clone()]);
    let (none, end) = store
        .list_deliveries("org#a", &all, 10, Some("not-a-cursor".to_owned()))
        .await
        .unwrap();
    assert!(none.is_empty() && end.is_none());
}
