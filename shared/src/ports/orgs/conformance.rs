//! The behaviour every [`OrgStore`] adapter must have. The embedded store and the DynamoDB
//! store run these through [`orgs_conformance!`](crate::orgs_conformance), each test on a
//! fresh, empty store.

use super::{OrgStore, NOTICE_RETENTION};
use crate::outbound::model::OrgProfile;
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;

/// A fixed millisecond-precise instant per test process, plus `secs`.
pub fn t(secs: i64) -> DateTime<Utc> {
    static BASE: std::sync::OnceLock<DateTime<Utc>> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
            - Duration::hours(1)
    }) + Duration::seconds(secs)
}

pub fn profile(org: &str, owner_email: Option<&str>) -> OrgProfile {
    OrgProfile {
        org_id: org.to_owned(),
        name: Some(format!("{org} Ltd — Zürich")),
        owner_email: owner_email.map(str::to_owned),
        created_at: t(0),
        updated_at: t(0),
    }
}

pub async fn a_profile_round_trips_and_is_replaced_whole(store: &dyn OrgStore) {
    assert_eq!(
        store.get_org("org-a").await.unwrap(),
        None,
        "no profile yet"
    );
    let first = profile("org-a", Some("owner@example.com"));
    store.put_org(&first).await.unwrap();
    assert_eq!(store.get_org("org-a").await.unwrap(), Some(first.clone()));

    let cleared = OrgProfile {
        name: None,
        owner_email: None,
        updated_at: t(60),
        ..first
    };
    store.put_org(&cleared).await.unwrap();
    assert_eq!(store.get_org("org-a").await.unwrap(), Some(cleared));
}

pub async fn another_orgs_profile_and_notices_are_its_own(store: &dyn OrgStore) {
    store
        .put_org(&profile("org-a", Some("a@example.com")))
        .await
        .unwrap();
    assert_eq!(store.get_org("org-b").await.unwrap(), None);
    // Ids that would collide if keys were joined naively stay apart.
    for org in ["org-a#PROFILE", "org-a%23PROFILE", "ORG#org-a"] {
        assert_eq!(store.get_org(org).await.unwrap(), None, "{org}");
    }
    store
        .put_org(&profile("org-b", Some("b@example.com")))
        .await
        .unwrap();
    let a = store.get_org("org-a").await.unwrap().unwrap();
    assert_eq!(a.owner_email.as_deref(), Some("a@example.com"));

    assert!(store
        .claim_notice("org-a", "dead_lettered#dlv_1", t(0))
        .await
        .unwrap());
    assert!(
        store
            .claim_notice("org-b", "dead_lettered#dlv_1", t(0))
            .await
            .unwrap(),
        "the same notice key in another org is another notice"
    );
}

pub async fn a_notice_is_claimed_once(store: &dyn OrgStore) {
    assert!(store
        .claim_notice("org-a", "dead_lettered#dlv_1", t(0))
        .await
        .unwrap());
    assert!(!store
        .claim_notice("org-a", "dead_lettered#dlv_1", t(0))
        .await
        .unwrap());
    assert!(
        !store
            .claim_notice("org-a", "dead_lettered#dlv_1", t(86_400 * 30))
            .await
            .unwrap(),
        "a month later it is still sent"
    );
    assert!(store
        .claim_notice("org-a", "dead_lettered#dlv_2", t(0))
        .await
        .unwrap());
    assert!(store
        .claim_notice("org-a", "dead_lettered#dlv_1%", t(0))
        .await
        .unwrap());
}

pub async fn a_notice_past_its_retention_may_be_claimed_again(store: &dyn OrgStore) {
    assert!(store
        .claim_notice("org-a", "disabled#ep_1", t(0))
        .await
        .unwrap());
    let later = t(0) + NOTICE_RETENTION + Duration::days(1);
    assert!(store
        .claim_notice("org-a", "disabled#ep_1", later)
        .await
        .unwrap());
    assert!(!store
        .claim_notice("org-a", "disabled#ep_1", later)
        .await
        .unwrap());
}

pub async fn exactly_one_of_twenty_concurrent_claims_wins(store: Arc<dyn OrgStore>) {
    let claims = (0..20).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .claim_notice("org-a", "dead_lettered#dlv_race", t(0))
                .await
                .unwrap()
        })
    });
    let won = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(|r| r.expect("the claim task finishes"))
        .filter(|won| *won)
        .count();
    assert_eq!(won, 1);
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn OrgStore>)` for a fresh, empty store; the guard lives for the
/// test (a temp dir, a table).
#[macro_export]
macro_rules! orgs_conformance {
    ($make:expr) => {
        mod orgs_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::orgs::conformance as c;

            macro_rules! case {
                ($name:ident, $takes:ident) => {
                    $crate::conformance_case!($make, $name, $takes);
                };
            }

            case!(a_profile_round_trips_and_is_replaced_whole, borrowed);
            case!(another_orgs_profile_and_notices_are_its_own, borrowed);
            case!(a_notice_is_claimed_once, borrowed);
            case!(a_notice_past_its_retention_may_be_claimed_again, borrowed);
            case!(exactly_one_of_twenty_concurrent_claims_wins, shared);
        }
    };
}
