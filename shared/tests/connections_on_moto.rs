//! The DynamoDB connection store against moto: the whole connection-store conformance suite
//! over the real DynamoDB wire protocol, each test on a fresh table made as the SAM template
//! makes it.
//!
//! Run with `infra/with-moto.sh cargo test -p hookline-shared --test connections_on_moto`:
//! without `HOOKLINE_MOTO_ENDPOINT` every test fails, it never skips.

use hookline::ports::connections::aws::DynamoConnectionStore;
use hookline::ports::connections::ConnectionStore;
use hookline::ports::secrets::aws::sdk_config_for;
use hookline::ports::store::aws::create_table;
use std::sync::Arc;

fn moto_endpoint() -> String {
    match std::env::var("HOOKLINE_MOTO_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => endpoint,
        _ => panic!(
            "HOOKLINE_MOTO_ENDPOINT is not set: these tests need a moto server. Run them with \
             infra/with-moto.sh cargo test -p hookline-shared --test connections_on_moto"
        ),
    }
}

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
