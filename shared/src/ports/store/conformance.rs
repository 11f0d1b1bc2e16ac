//! The behaviour every [`DeliveryStore`] adapter must have. Both the embedded store and the
//! DynamoDB store run these through [`store_conformance!`](crate::store_conformance), each
//! test on a fresh, empty store.

use super::{Claim, DeliveryQuery, DeliveryStore, LogCounts, LogQuery, RecordOutcome, Reopen};
use crate::model::{
    Activity, DeliveryKey, DeliveryOutcome, DeliveryStatus, NewDelivery, Owner, Source,
    StoredPayload,
};
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

/// A fixed point in time per test process (an hour ago, so records are live for the
/// wall-clock checks of `list`), plus `secs`: the same `t(n)` is the same instant everywhere.
fn t(secs: i64) -> DateTime<Utc> {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| Utc::now() - Duration::hours(1)) + Duration::seconds(secs)
}

fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

pub fn new_delivery(source: Source, id: &str, received_at: DateTime<Utc>) -> NewDelivery {
    NewDelivery {
        key: DeliveryKey::new(source, id),
        source,
        delivery_id: id.to_string(),
        event_type: "push".to_string(),
        payload_sha256: "ab".repeat(32),
        signature_verified: true,
        received_at,
        enqueue_lease_until: received_at + Duration::seconds(30),
        expires_at: received_at + Duration::days(7),
        owner: None,
    }
}

/// A small payload kept for a day from `at`.
pub fn payload(at: DateTime<Utc>) -> crate::model::StoredPayload {
    crate::model::StoredPayload {
        body: b"{\"zen\":\"Keep it logically awesome.\"}"[..].into(),
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-github-event".into(), "ping".into()),
        ],
        expires_at: at + Duration::days(1),
    }
}

fn outcome(status: DeliveryStatus, error: Option<&str>, at: DateTime<Utc>) -> DeliveryOutcome {
    DeliveryOutcome {
        status,
        error: error.map(str::to_string),
        processed_at: at,
        duration_ms: 12,
    }
}

pub async fn a_new_delivery_is_recorded_as_received(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Github, &unique_id("gh"), t(0));
    assert_eq!(store.record(&new).await.unwrap(), RecordOutcome::Recorded);
    let got = store
        .get(&new.key)
        .await
        .unwrap()
        .expect("recorded delivery is readable");
    assert_eq!(got.source, Source::Github);
    assert_eq!(got.delivery_id, new.delivery_id);
    assert_eq!(got.event_type, "push");
    assert_eq!(got.status, DeliveryStatus::Received);
    assert_eq!(got.payload_sha256, new.payload_sha256);
    assert!(got.signature_verified);
    assert_eq!(
        got.received_at.timestamp_millis(),
        new.received_at.timestamp_millis()
    );
    assert_eq!(got.expires_at.timestamp(), new.expires_at.timestamp());
    assert_eq!(got.attempts, 0);
    assert_eq!(got.queued_at, None);
    assert_eq!(got.processed_at, None);
    assert_eq!(got.error, None);
}

pub async fn a_second_record_of_the_same_key_reports_the_existing_one(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Stripe, &unique_id("evt"), t(0));
    store.record(&new).await.unwrap();
    let mut again = new.clone();
    again.payload_sha256 = "cd".repeat(32);
    again.received_at = t(5);
    match store.record(&again).await.unwrap() {
        RecordOutcome::Exists(existing) => {
            assert_eq!(
                existing.payload_sha256, new.payload_sha256,
                "the first payload wins"
            );
            assert_eq!(existing.status, DeliveryStatus::Received);
        }
        other => panic!("expected Exists, got {other:?}"),
    }
    assert_eq!(
        store.get(&new.key).await.unwrap().unwrap().payload_sha256,
        new.payload_sha256
    );
}

pub async fn an_expired_record_counts_as_absent(store: &dyn DeliveryStore) {
    let id = unique_id("old");
    let mut old = new_delivery(Source::Jira, &id, t(0));
    old.expires_at = t(10);
    store.record(&old).await.unwrap();
    let mut fresh = new_delivery(Source::Jira, &id, t(20));
    fresh.payload_sha256 = "ef".repeat(32);
    assert_eq!(store.record(&fresh).await.unwrap(), RecordOutcome::Recorded);
    let got = store.get(&fresh.key).await.unwrap().unwrap();
    assert_eq!(got.payload_sha256, fresh.payload_sha256);
    assert_eq!(got.status, DeliveryStatus::Received);
}

pub async fn only_one_of_many_concurrent_records_wins(store: Arc<dyn DeliveryStore>) {
    let new = new_delivery(Source::Github, &unique_id("race"), t(0));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = store.clone();
            let new = new.clone();
            tokio::spawn(async move { store.record(&new).await.unwrap() })
        })
        .collect();
    let mut recorded = 0;
    for task in tasks {
        if task.await.unwrap() == RecordOutcome::Recorded {
            recorded += 1;
        }
    }
    assert_eq!(recorded, 1);
}

pub async fn an_enqueue_lease_is_taken_over_only_after_it_ends(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Gitlab, &unique_id("gl"), t(0));
    store.record(&new).await.unwrap();
    // The recording request still owns the enqueue.
    assert!(!store
        .take_over_enqueue(&new.key, t(10), t(40))
        .await
        .unwrap());
    // After the lease, exactly one retry takes over; its new lease holds off the next.
    assert!(store
        .take_over_enqueue(&new.key, t(31), t(61))
        .await
        .unwrap());
    assert!(!store
        .take_over_enqueue(&new.key, t(32), t(62))
        .await
        .unwrap());
    // A released lease can be taken at once.
    store.release_enqueue(&new.key).await.unwrap();
    assert!(store
        .take_over_enqueue(&new.key, t(33), t(63))
        .await
        .unwrap());
    // Once queued there is nothing to take over.
    store.mark_queued(&new.key, t(34)).await.unwrap();
    assert!(!store
        .take_over_enqueue(&new.key, t(100), t(130))
        .await
        .unwrap());
}

pub async fn only_one_concurrent_retry_takes_over(store: Arc<dyn DeliveryStore>) {
    let new = new_delivery(Source::Twilio, &unique_id("tw"), t(0));
    store.record(&new).await.unwrap();
    store.release_enqueue(&new.key).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let key = new.key.clone();
            tokio::spawn(async move { store.take_over_enqueue(&key, t(1), t(31)).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for task in tasks {
        taken += task.await.unwrap() as usize;
    }
    assert_eq!(taken, 1);
}

pub async fn a_delivery_moves_through_queued_failed_and_processed(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Github, &unique_id("life"), t(0));
    store.record(&new).await.unwrap();
    store.mark_queued(&new.key, t(1)).await.unwrap();
    let queued = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(queued.status, DeliveryStatus::Queued);
    assert_eq!(
        queued.queued_at.map(|t| t.timestamp()),
        Some(t(1).timestamp())
    );

    let Claim::Claimed(first) = store.claim(&new.key, t(2), t(32)).await.unwrap() else {
        panic!("a queued delivery can be claimed")
    };
    assert_eq!(first.attempts, 1);
    assert_eq!(
        store.claim(&new.key, t(3), t(33)).await.unwrap(),
        Claim::Busy
    );

    store
        .finish(
            &new.key,
            &outcome(DeliveryStatus::Failed, Some("handler: boom"), t(4)),
        )
        .await
        .unwrap();
    let failed = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.error.as_deref(), Some("handler: boom"));

    // A failed delivery is retried at once: finishing ended the lease.
    let Claim::Claimed(second) = store.claim(&new.key, t(5), t(35)).await.unwrap() else {
        panic!("a failed delivery can be claimed again")
    };
    assert_eq!(second.attempts, 2);
    store
        .finish(&new.key, &outcome(DeliveryStatus::Processed, None, t(6)))
        .await
        .unwrap();
    let done = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(done.status, DeliveryStatus::Processed);
    assert_eq!(done.error, None);
    assert_eq!(done.duration_ms, Some(12));
    assert_eq!(
        done.processed_at.map(|t| t.timestamp()),
        Some(t(6).timestamp())
    );

    match store.claim(&new.key, t(7), t(37)).await.unwrap() {
        Claim::Done(d) => assert_eq!(d.status, DeliveryStatus::Processed),
        other => panic!("a processed delivery is done, got {other:?}"),
    }
    // A second mark_queued changes neither the status nor the first queue time.
    store.mark_queued(&new.key, t(8)).await.unwrap();
    let again = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(again.status, DeliveryStatus::Processed);
    assert_eq!(
        again.queued_at.map(|t| t.timestamp()),
        Some(t(1).timestamp())
    );
}

pub async fn a_worker_may_claim_a_delivery_still_marked_received(store: &dyn DeliveryStore) {
    // The pipeline enqueued it but has not marked it queued yet.
    let new = new_delivery(Source::Whatsapp, &unique_id("wa"), t(0));
    store.record(&new).await.unwrap();
    assert!(matches!(
        store.claim(&new.key, t(1), t(31)).await.unwrap(),
        Claim::Claimed(_)
    ));
    store
        .finish(&new.key, &outcome(DeliveryStatus::Skipped, None, t(2)))
        .await
        .unwrap();
    match store.claim(&new.key, t(3), t(33)).await.unwrap() {
        Claim::Done(d) => assert_eq!(d.status, DeliveryStatus::Skipped),
        other => panic!("a skipped delivery is done, got {other:?}"),
    }
    // The pipeline's late mark_queued keeps the worker's status but logs the queue time.
    store.mark_queued(&new.key, t(4)).await.unwrap();
    let got = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(got.status, DeliveryStatus::Skipped);
    assert_eq!(got.queued_at.map(|t| t.timestamp()), Some(t(4).timestamp()));
}

pub async fn an_expired_process_lease_can_be_claimed_again(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Github, &unique_id("lease"), t(0));
    store.record(&new).await.unwrap();
    assert!(matches!(
        store.claim(&new.key, t(1), t(31)).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert_eq!(
        store.claim(&new.key, t(30), t(60)).await.unwrap(),
        Claim::Busy
    );
    match store.claim(&new.key, t(32), t(62)).await.unwrap() {
        Claim::Claimed(d) => assert_eq!(d.attempts, 2),
        other => panic!("a crashed worker's lease ends, got {other:?}"),
    }
}

pub async fn only_one_concurrent_worker_claims(store: Arc<dyn DeliveryStore>) {
    let new = new_delivery(Source::Github, &unique_id("claim"), t(0));
    store.record(&new).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            let key = new.key.clone();
            tokio::spawn(async move { store.claim(&key, t(1), t(31)).await.unwrap() })
        })
        .collect();
    let mut claimed = 0;
    for task in tasks {
        claimed += matches!(task.await.unwrap(), Claim::Claimed(_)) as usize;
    }
    assert_eq!(claimed, 1);
}

pub async fn a_missing_delivery_cannot_be_claimed(store: &dyn DeliveryStore) {
    let key = DeliveryKey::new(Source::Github, &unique_id("nobody"));
    assert_eq!(
        store.claim(&key, t(0), t(30)).await.unwrap(),
        Claim::Missing
    );
    assert_eq!(store.get(&key).await.unwrap(), None);
}

pub async fn the_log_lists_newest_first_by_source(store: &dyn DeliveryStore) {
    let mut ids = Vec::new();
    for i in 0..5 {
        let source = if i % 2 == 0 {
            Source::Github
        } else {
            Source::Stripe
        };
        let id = unique_id(&format!("log{i}"));
        store
            .record(&new_delivery(source, &id, t(i)))
            .await
            .unwrap();
        ids.push((source, id));
    }
    let all = store
        .list(&DeliveryQuery {
            source: None,
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<_> = all
        .iter()
        .map(|d| (d.source, d.delivery_id.clone()))
        .collect();
    let expected: Vec<_> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, expected, "newest first");

    let github = store
        .list(&DeliveryQuery {
            source: Some(Source::Github),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(github.len(), 2, "the limit is kept");
    assert!(github.iter().all(|d| d.source == Source::Github));
    assert_eq!(github[0].delivery_id, ids[4].1);
    assert_eq!(github[1].delivery_id, ids[2].1);
}

pub async fn the_log_leaves_out_expired_records(store: &dyn DeliveryStore) {
    let mut gone = new_delivery(
        Source::Jira,
        &unique_id("gone"),
        Utc::now() - Duration::days(9),
    );
    gone.expires_at = Utc::now() - Duration::days(2);
    store.record(&gone).await.unwrap();
    let live = new_delivery(Source::Jira, &unique_id("live"), t(0));
    store.record(&live).await.unwrap();
    let listed = store
        .list(&DeliveryQuery {
            source: Some(Source::Jira),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<_> = listed.iter().map(|d| d.delivery_id.as_str()).collect();
    assert_eq!(ids, vec![live.delivery_id.as_str()]);
}

fn activity(id: &str, at: DateTime<Utc>, action: &str) -> Activity {
    Activity {
        source: Source::Github,
        delivery_id: id.to_string(),
        event_type: "pull_request".into(),
        action: Some(action.into()),
        repository: Some("octo/hello".into()),
        actor: Some("octocat".into()),
        git_ref: Some("refs/heads/main".into()),
        url: Some("https://github.com/octo/hello/pull/1".into()),
        occurred_at: Some(at),
        received_at: at,
        processed_at: at + Duration::seconds(1),
    }
}

pub async fn activities_are_kept_once_per_delivery_newest_first(store: &dyn DeliveryStore) {
    let a = unique_id("act-a");
    let b = unique_id("act-b");
    store
        .put_activity(&activity(&a, t(0), "opened"))
        .await
        .unwrap();
    store
        .put_activity(&activity(&b, t(1), "opened"))
        .await
        .unwrap();
    // The worker redoing a delivery overwrites its activity instead of adding one.
    store
        .put_activity(&activity(&a, t(0), "closed"))
        .await
        .unwrap();
    let listed = store.list_activities(10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].delivery_id, b);
    assert_eq!(listed[1].delivery_id, a);
    assert_eq!(listed[1].action.as_deref(), Some("closed"));
    let mut expected = activity(&a, t(0), "closed");
    for (want, got) in [
        (
            expected.occurred_at.unwrap(),
            listed[1].occurred_at.unwrap(),
        ),
        (expected.received_at, listed[1].received_at),
        (expected.processed_at, listed[1].processed_at),
    ] {
        assert_eq!(want.timestamp_millis(), got.timestamp_millis());
    }
    // Stores keep milliseconds; everything else round-trips exactly.
    expected.occurred_at = listed[1].occurred_at;
    expected.received_at = listed[1].received_at;
    expected.processed_at = listed[1].processed_at;
    assert_eq!(listed[1], expected);
}

fn owned(
    source: Source,
    id: &str,
    at: DateTime<Utc>,
    org: &str,
    connection: Option<&str>,
) -> NewDelivery {
    NewDelivery {
        owner: Some(Owner {
            org_id: org.to_string(),
            connection_id: connection.map(str::to_string),
            repository_full_name: connection.map(|_| "acme/api".to_string()),
        }),
        ..new_delivery(source, id, at)
    }
}

fn org_query(org: &str, limit: usize) -> LogQuery {
    LogQuery {
        org_id: org.to_string(),
        connection_id: None,
        source: None,
        event_type: None,
        status: None,
        since: None,
        limit,
        after: None,
        now: t(100),
    }
}

pub async fn an_orgs_log_holds_only_its_deliveries_newest_first(store: &dyn DeliveryStore) {
    let (org, other) = (unique_id("org"), unique_id("org"));
    let mut mine = Vec::new();
    for i in 0..5 {
        let conn = if i % 2 == 0 { "rpc_one" } else { "rpc_two" };
        let new = owned(Source::Github, &unique_id("mine"), t(i), &org, Some(conn));
        store.record(&new).await.unwrap();
        mine.push(new);
    }
    store
        .record(&owned(
            Source::Github,
            &unique_id("theirs"),
            t(2),
            &other,
            Some("rpc_x"),
        ))
        .await
        .unwrap();
    store
        .record(&new_delivery(Source::Jira, &unique_id("nobody"), t(3)))
        .await
        .unwrap();

    let page = store.list_org(&org_query(&org, 10)).await.unwrap();
    let ids: Vec<_> = page
        .deliveries
        .iter()
        .map(|d| d.delivery_id.clone())
        .collect();
    let expected: Vec<_> = mine.iter().rev().map(|n| n.delivery_id.clone()).collect();
    assert_eq!(ids, expected, "only the org's, newest first");
    assert_eq!(page.next, None);
    let first = &page.deliveries[0];
    assert_eq!(first.owner, mine[4].owner);

    // Pages of two, each going on from the last one's cursor, cover the log once.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list_org(&LogQuery {
                after: after.clone(),
                ..org_query(&org, 2)
            })
            .await
            .unwrap();
        assert!(page.deliveries.len() <= 2);
        seen.extend(page.deliveries.iter().map(|d| d.delivery_id.clone()));
        match page.next {
            Some(next) => {
                assert!(super::valid_log_sort_key(&next), "{next}");
                after = Some(next)
            }
            None => break,
        }
    }
    assert_eq!(seen, expected);

    // Filters: connection, status, source, event type, since.
    store
        .finish(
            &mine[1].key,
            &outcome(DeliveryStatus::Failed, Some("boom"), t(10)),
        )
        .await
        .unwrap();
    let by = |q: LogQuery| async move {
        store
            .list_org(&q)
            .await
            .unwrap()
            .deliveries
            .into_iter()
            .map(|d| d.delivery_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by(LogQuery {
            connection_id: Some("rpc_two".into()),
            ..org_query(&org, 10)
        })
        .await,
        vec![mine[3].delivery_id.clone(), mine[1].delivery_id.clone()]
    );
    assert_eq!(
        by(LogQuery {
            status: Some(DeliveryStatus::Failed),
            ..org_query(&org, 10)
        })
        .await,
        vec![mine[1].delivery_id.clone()]
    );
    assert!(by(LogQuery {
        source: Some(Source::Stripe),
        ..org_query(&org, 10)
    })
    .await
    .is_empty());
    assert!(by(LogQuery {
        event_type: Some("issues".into()),
        ..org_query(&org, 10)
    })
    .await
    .is_empty());
    assert_eq!(
        by(LogQuery {
            since: Some(t(3)),
            ..org_query(&org, 10)
        })
        .await,
        vec![mine[4].delivery_id.clone(), mine[3].delivery_id.clone()]
    );
    // Expired by `now`: gone from the log.
    assert!(by(LogQuery {
        now: t(0) + Duration::days(8),
        ..org_query(&org, 10)
    })
    .await
    .is_empty());
}

pub async fn a_delivery_joins_an_orgs_log_once_its_owner_is_known(store: &dyn DeliveryStore) {
    let org = unique_id("org");
    let new = new_delivery(Source::Stripe, &unique_id("evt"), t(0));
    store.record(&new).await.unwrap();
    assert!(store
        .list_org(&org_query(&org, 10))
        .await
        .unwrap()
        .deliveries
        .is_empty());
    let owner = Owner {
        org_id: org.clone(),
        connection_id: None,
        repository_full_name: None,
    };
    store.set_owner(&new.key, &owner).await.unwrap();
    let page = store.list_org(&org_query(&org, 10)).await.unwrap();
    assert_eq!(page.deliveries.len(), 1);
    assert_eq!(page.deliveries[0].owner.as_ref(), Some(&owner));
    assert_eq!(
        store.get(&new.key).await.unwrap().unwrap().owner,
        Some(owner)
    );
}

pub async fn a_connections_counts_are_those_of_its_log(store: &dyn DeliveryStore) {
    let org = unique_id("org");
    let mut keys = Vec::new();
    for i in 0..4 {
        let new = owned(Source::Gitlab, &unique_id("c"), t(i), &org, Some("rpc_c"));
        store.record(&new).await.unwrap();
        keys.push(new.key);
    }
    store
        .record(&owned(
            Source::Gitlab,
            &unique_id("c"),
            t(9),
            &org,
            Some("rpc_other"),
        ))
        .await
        .unwrap();
    for key in &keys[..2] {
        store
            .finish(key, &outcome(DeliveryStatus::Failed, Some("x"), t(5)))
            .await
            .unwrap();
    }
    let counts = store.count_connection(&org, "rpc_c", t(100)).await.unwrap();
    assert_eq!(counts.total, 4);
    assert_eq!(counts.failed, 2);
    assert_eq!(
        counts.last_received_at.map(|t| t.timestamp_millis()),
        Some(t(3).timestamp_millis())
    );
    assert_eq!(
        store
            .count_connection(&org, "rpc_none", t(100))
            .await
            .unwrap(),
        LogCounts::default()
    );
}

pub async fn a_finished_delivery_reopens_for_one_replay_at_a_time(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Github, &unique_id("replay"), t(0));
    store.record(&new).await.unwrap();
    // Not finished yet: nothing to replay.
    assert!(matches!(
        store.reopen(&new.key, t(1), t(-179)).await.unwrap(),
        Reopen::InFlight(_)
    ));
    let Claim::Claimed(_) = store.claim(&new.key, t(1), t(31)).await.unwrap() else {
        panic!("claimable")
    };
    store
        .finish(&new.key, &outcome(DeliveryStatus::Processed, None, t(2)))
        .await
        .unwrap();
    match store.reopen(&new.key, t(3), t(-177)).await.unwrap() {
        Reopen::Reopened(before) => {
            assert_eq!(before.status, DeliveryStatus::Processed);
            assert_eq!(before.attempts, 1);
        }
        other => panic!("a processed delivery reopens, got {other:?}"),
    }
    let queued = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(queued.status, DeliveryStatus::Queued);
    // A second replay while the first is queued changes nothing.
    assert!(matches!(
        store.reopen(&new.key, t(4), t(-176)).await.unwrap(),
        Reopen::InFlight(_)
    ));
    // The worker's claim counts the replay as a new attempt of the same delivery.
    let Claim::Claimed(again) = store.claim(&new.key, t(5), t(35)).await.unwrap() else {
        panic!("a reopened delivery is claimable")
    };
    assert_eq!(again.attempts, 2);
    // While a worker holds it, no replay.
    assert!(matches!(
        store.reopen(&new.key, t(6), t(-174)).await.unwrap(),
        Reopen::InFlight(_)
    ));
    store
        .finish(&new.key, &outcome(DeliveryStatus::Failed, Some("no"), t(7)))
        .await
        .unwrap();
    assert!(matches!(
        store.reopen(&new.key, t(8), t(-172)).await.unwrap(),
        Reopen::Reopened(_)
    ));
    let nobody = DeliveryKey::new(Source::Github, &unique_id("nobody"));
    assert_eq!(
        store.reopen(&nobody, t(8), t(-172)).await.unwrap(),
        Reopen::Missing
    );
}

/// A delivery no message will come for is not stuck: `received` once the request that
/// recorded it can no longer queue it (its enqueue lease ended), and `queued` for longer than
/// a process lease with no worker on it, both reopen for a replay.
pub async fn a_stuck_delivery_reopens_once_no_message_can_come(store: &dyn DeliveryStore) {
    let new = new_delivery(Source::Github, &unique_id("stuck"), t(0));
    store.record(&new).await.unwrap();
    // The recording request may still queue it until t(30).
    assert!(matches!(
        store.reopen(&new.key, t(29), t(29 - 180)).await.unwrap(),
        Reopen::InFlight(_)
    ));
    match store.reopen(&new.key, t(31), t(31 - 180)).await.unwrap() {
        Reopen::Reopened(before) => assert_eq!(before.status, DeliveryStatus::Received),
        other => panic!("a received delivery past its enqueue lease reopens, got {other:?}"),
    }
    let queued = store.get(&new.key).await.unwrap().unwrap();
    assert_eq!(queued.status, DeliveryStatus::Queued);
    assert_eq!(
        queued.queued_at.map(|t| t.timestamp()),
        Some(t(31).timestamp())
    );
    // Queued within a process lease: its message may still come.
    assert!(matches!(
        store.reopen(&new.key, t(100), t(100 - 180)).await.unwrap(),
        Reopen::InFlight(_)
    ));
    // Queued longer than that, no worker on it: its message was lost.
    match store.reopen(&new.key, t(400), t(400 - 180)).await.unwrap() {
        Reopen::Reopened(before) => assert_eq!(before.status, DeliveryStatus::Queued),
        other => panic!("a delivery queued past the process lease reopens, got {other:?}"),
    }
    let Claim::Claimed(claimed) = store.claim(&new.key, t(401), t(431)).await.unwrap() else {
        panic!("a reopened delivery is claimable")
    };
    assert_eq!(claimed.attempts, 1);
    // A worker on it: no replay, however long it has been queued.
    assert!(matches!(
        store.reopen(&new.key, t(402), t(402)).await.unwrap(),
        Reopen::InFlight(_)
    ));
}

/// Bytes that are not UTF-8 anywhere and differ from part to part.
fn binary_body(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] | 0x80)
        .collect()
}

pub async fn a_payload_round_trips_byte_for_byte_until_it_expires(store: &dyn DeliveryStore) {
    let at = t(0);
    for (name, body) in [
        ("small", b"{\"a\":1}\n".to_vec()),
        ("empty", Vec::new()),
        // Over DynamoDB's 400 KB item limit, and the default 1 MiB body limit itself.
        ("big", binary_body(1024 * 1024)),
    ] {
        let key = DeliveryKey::new(Source::Twilio, &unique_id(name));
        let kept = StoredPayload {
            body: body.into(),
            headers: vec![
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded".into(),
                ),
                ("x-twilio-signature".into(), "[redacted]".into()),
                ("x-twilio-signature".into(), "[redacted]".into()),
            ],
            expires_at: at + Duration::hours(1),
        };
        store.put_payload(&key, &kept).await.unwrap();
        let got = store
            .get_payload(&key, at + Duration::minutes(59))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: kept until it expires"));
        assert_eq!(got.body.len(), kept.body.len(), "{name}");
        assert!(got.body == kept.body, "{name}: byte for byte");
        assert_eq!(got.headers, kept.headers, "{name}");
        assert_eq!(
            got.expires_at.timestamp_millis(),
            kept.expires_at.timestamp_millis()
        );
        assert_eq!(
            store
                .get_payload(&key, at + Duration::hours(1))
                .await
                .unwrap(),
            None,
            "{name}: expired payloads are gone on read"
        );
    }
    let never = DeliveryKey::new(Source::Github, &unique_id("never"));
    assert_eq!(store.get_payload(&never, at).await.unwrap(), None);
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn DeliveryStore>)` for a fresh, empty store; the guard lives for
/// the test (a temp dir, a table to drop).
#[macro_export]
macro_rules! store_conformance {
    ($make:expr) => {
        mod store_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::store::conformance as c;

            macro_rules! case {
                ($name:ident, $takes:ident) => {
                    $crate::conformance_case!($make, $name, $takes);
                };
            }

            case!(a_new_delivery_is_recorded_as_received, borrowed);
            case!(
                a_second_record_of_the_same_key_reports_the_existing_one,
                borrowed
            );
            case!(an_expired_record_counts_as_absent, borrowed);
            case!(only_one_of_many_concurrent_records_wins, shared);
            case!(an_enqueue_lease_is_taken_over_only_after_it_ends, borrowed);
            case!(only_one_concurrent_retry_takes_over, shared);
            case!(
                a_delivery_moves_through_queued_failed_and_processed,
                borrowed
            );
            case!(
                a_worker_may_claim_a_delivery_still_marked_received,
                borrowed
            );
            case!(an_expired_process_lease_can_be_claimed_again, borrowed);
            case!(only_one_concurrent_worker_claims, shared);
            case!(a_missing_delivery_cannot_be_claimed, borrowed);
            case!(the_log_lists_newest_first_by_source, borrowed);
            case!(the_log_leaves_out_expired_records, borrowed);
            case!(activities_are_kept_once_per_delivery_newest_first, borrowed);
            case!(an_orgs_log_holds_only_its_deliveries_newest_first, borrowed);
            case!(
                a_delivery_joins_an_orgs_log_once_its_owner_is_known,
                borrowed
            );
            case!(a_connections_counts_are_those_of_its_log, borrowed);
            case!(
                a_finished_delivery_reopens_for_one_replay_at_a_time,
                borrowed
            );
            case!(a_stuck_delivery_reopens_once_no_message_can_come, borrowed);
            case!(
                a_payload_round_trips_byte_for_byte_until_it_expires,
                borrowed
            );
        }
    };
}
