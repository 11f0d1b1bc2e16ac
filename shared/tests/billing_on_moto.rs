//! The DynamoDB billing store against moto: the billing-store conformance suite over the real
//! DynamoDB wire protocol, each test on a fresh table made as the SAM template makes it, plus
//! what only this adapter has (several Lambdas, each with its own client, racing on one org).
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test billing_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test fails, none skips.

use hookline::billing::model::UsageMetric;
use hookline::ports::billing::aws::DynamoBillingStore;
use hookline::ports::billing::conformance::{subscription, PERIOD};
use hookline::ports::billing::{BillingError, BillingStore};
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use std::sync::Arc;

async fn fresh_store() -> ((), Arc<dyn BillingStore>) {
    let mut lambdas = lambdas(1).await;
    ((), lambdas.remove(0))
}

/// `n` stores on one fresh table, each with its own client, as `n` Lambdas would have.
async fn lambdas(n: usize) -> Vec<Arc<dyn BillingStore>> {
    let config = sdk_config_for(Some(&moto_endpoint())).await;
    let table = format!("hookline-billing-{}", uuid::Uuid::new_v4());
    create_table(&aws_sdk_dynamodb::Client::new(&config), &table)
        .await
        .expect("create the test table in moto");
    (0..n)
        .map(|_| {
            let client = aws_sdk_dynamodb::Client::new(&config);
            Arc::new(DynamoBillingStore::new(client, &table)) as Arc<dyn BillingStore>
        })
        .collect()
}

hookline::billing_conformance!(fresh_store());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambdas_racing_to_link_one_customer_to_their_orgs_leave_exactly_one_link() {
    let stores = lambdas(6).await;
    let races = stores.iter().enumerate().map(|(i, store)| {
        let store = store.clone();
        tokio::spawn(async move {
            let org = format!("org-{i}");
            let sub = subscription("cus_contested", 100, 0);
            (org.clone(), store.put_subscription(&org, &sub).await)
        })
    });
    let mut winners = Vec::new();
    for done in futures::future::join_all(races).await {
        match done.expect("the task finishes") {
            (org, Ok(written)) => {
                assert!(written);
                winners.push(org);
            }
            (_, Err(BillingError::CustomerTaken { customer_id })) => {
                assert_eq!(customer_id, "cus_contested")
            }
            (org, Err(e)) => panic!("{org}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let winner = &winners[0];
    assert_eq!(
        stores[0].org_for_customer("cus_contested").await.unwrap(),
        Some(winner.clone())
    );
    for (i, store) in stores.iter().enumerate() {
        let org = format!("org-{i}");
        let account = store.get_account(&org).await.unwrap();
        assert_eq!(account.is_some(), &org == winner, "{org}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambdas_counting_against_one_limit_never_pass_it() {
    let stores = lambdas(4).await;
    let counts = (0..24).map(|i| {
        let store = stores[i % stores.len()].clone();
        tokio::spawn(async move {
            store
                .add_usage("org-a", PERIOD, UsageMetric::EventsPublished, 2, Some(15))
                .await
                .unwrap()
        })
    });
    let succeeded = futures::future::join_all(counts)
        .await
        .into_iter()
        .filter_map(|r| r.expect("the task finishes"))
        .count();
    // 7 counts of 2 fit in 15; the 8th would make 16.
    assert_eq!(succeeded, 7);
    let usage = stores[0].usage("org-a", PERIOD).await.unwrap();
    assert_eq!(usage.events_published, 14);
}
