//! The DynamoDB counter, on the one Hookline table (`pk`/`sk`; the SAM template defines it,
//! `store::aws::create_table` makes it for tests).
//!
//! | item | `pk` | `sk` | attributes |
//! |---|---|---|---|
//! | one org's window | `RATE#{org}#{length}#{start}` | `RATE` | `hits` (N), `expires_at` (N, epoch s: the table's TTL) |
//!
//! `{org}` is escaped (`%` → `%25`, `#` → `%23`) so no org id can forge another's key. A hit
//! is one `UpdateItem ADD` answering the new count, so concurrent Lambdas each get their own
//! count in one round trip. Each window is its own partition key: a busy org's counter is a
//! fresh item every window rather than one hot item for ever, and its TTL sweeps it away.

use super::{RateLimitError, RateLimiter, Window};
use crate::ports::dynamo::{esc, n, DynamoError, Reader, Table};
use async_trait::async_trait;
use aws_sdk_dynamodb::types::ReturnValue;
use aws_sdk_dynamodb::Client;

const SK: &str = "RATE";

/// How long past its end a window's item is kept: Lambdas' clocks may differ by a little,
/// and a late hit must not find its window swept and start it again from one.
const EXPIRY_GRACE_SECS: i64 = 300;

impl DynamoError for RateLimitError {
    fn unavailable(message: String) -> Self {
        RateLimitError::Unavailable(message)
    }

    fn corrupt(key: String, reason: String) -> Self {
        RateLimitError::Unavailable(format!("corrupt counter {key}: {reason}"))
    }
}

/// The AWS adapter of [`RateLimiter`].
#[derive(Debug, Clone)]
pub struct DynamoRateLimiter {
    client: Client,
    table: String,
}

impl DynamoRateLimiter {
    /// The counter on `table`, over the DynamoDB client the function already built.
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

/// The partition key of `org_id`'s count in `window`.
pub fn window_pk(org_id: &str, window: Window) -> String {
    format!(
        "RATE#{}#{}#{}",
        esc(org_id),
        window.length_secs,
        window.start
    )
}

#[async_trait]
impl RateLimiter for DynamoRateLimiter {
    async fn hit(&self, org_id: &str, window: Window) -> Result<u64, RateLimitError> {
        let db = Table::<RateLimitError>::new(&self.client, &self.table);
        let update = db
            .update_item(window_pk(org_id, window), SK)
            .update_expression("ADD #hits :one SET expires_at = :expires")
            .expression_attribute_names("#hits", "hits")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expires", n(window.end() + EXPIRY_GRACE_SECS))
            .return_values(ReturnValue::UpdatedNew);
        let updated = db
            .send_update("UpdateItem", update)
            .await?
            .ok_or_else(|| RateLimitError::Unavailable("an unconditional update failed".into()))?;
        Reader::<RateLimitError>::new(&updated).u64("hits")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_be_forged_with_separators() {
        let w = Window {
            start: 1_800_000_000,
            length_secs: 60,
        };
        assert_eq!(window_pk("acme", w), "RATE#acme#60#1800000000");
        assert_ne!(window_pk("a#60", w), window_pk("a%2360", w));
        assert_eq!(window_pk("a#60", w), "RATE#a%2360#60#1800000000");
    }
}
