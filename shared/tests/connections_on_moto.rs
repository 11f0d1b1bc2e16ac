//! The DynamoDB connection store against moto: the whole connection-store conformance suite
//! over the real DynamoDB wire protocol, each test on a fresh table made as the SAM template
//! makes it.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test connections_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test fails, it never skips.

use hookline::ports::connections::aws::DynamoConnectionStore;
use hookline::ports::connections::ConnectionStore;
use hookline::ports::secrets::aws::{moto_endpoint, sdk_config_for};
use hookline::ports::store::aws::create_table;
use std::sync::Arc;

async fn fresh_store() -> ((), Arc<dyn ConnectionStore>) {
    let config = sdk_config_for(Some(&moto_endpoint())).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("hookline-connections-{}", uuid::Uuid::new_v4());
    create_table(&client, &table)
        .await
        .expect("create the test table in moto");
    ((), Arc::new(DynamoConnectionStore::new(client, table)))
}

hookline::connections_conformance!(fresh_store());

/// The hook-health check lists every connection from the sparse `gsi2` (no Scan of the
/// table, which also holds payload parts); connections written before they carried `gsi2pk`
/// are indexed on its first run, and other items are never listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_listed_from_the_index_including_ones_written_before_it() {
    use aws_sdk_dynamodb::types::AttributeValue;
    use hookline::ports::connections::conformance::connection;
    let config = sdk_config_for(Some(&moto_endpoint())).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = format!("hookline-connections-{}", uuid::Uuid::new_v4());
    create_table(&client, &table).await.unwrap();
    let store = DynamoConnectionStore::new(client.clone(), table.clone());
    let new = connection("org-a", "owner/new");
    let old = connection("org-b", "owner/old");
    store.create(&new).await.unwrap();
    store.create(&old).await.unwrap();
    // `old` as written before connection items carried gsi2pk.
    client
        .update_item()
        .table_name(&table)
        .key("pk", AttributeValue::S(format!("CONN#{}", old.id)))
        .key("sk", AttributeValue::S("CONN".into()))
        .update_expression("REMOVE gsi2pk, gsi2sk")
        .send()
        .await
        .unwrap();
    // Something else in the table: not a connection.
    client
        .put_item()
        .table_name(&table)
        .item("pk", AttributeValue::S("DLV#x".into()))
        .item("sk", AttributeValue::S("PART#0000".into()))
        .send()
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = store.list_all(1, cursor).await.unwrap();
        assert!(page.len() <= 1);
        seen.extend(page.into_iter().map(|c| c.id));
        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    seen.sort();
    let mut want = vec![new.id.clone(), old.id.clone()];
    want.sort();
    assert_eq!(seen, want);
    // Both are in the index the check queries, and nothing else is.
    let indexed = client
        .query()
        .table_name(&table)
        .index_name("gsi2")
        .key_condition_expression("gsi2pk = :all")
        .expression_attribute_values(":all", AttributeValue::S("ALLCONN".into()))
        .send()
        .await
        .unwrap();
    assert_eq!(indexed.count(), 2);
}
