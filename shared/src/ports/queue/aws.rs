//! The SQS queue: a main queue whose redrive policy moves a message to its dead-letter queue
//! after `maxReceiveCount` receives, and a redrive that moves dead letters back.

use super::{Queue, QueueError, ReceivedMessage};
use crate::ports::store::aws::error_chain;
use async_trait::async_trait;
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::operation::delete_message::DeleteMessageError;
use aws_sdk_sqs::operation::send_message::SendMessageError;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName, QueueAttributeName};
use aws_sdk_sqs::Client;
use std::time::Duration;

/// SQS's longest `DelaySeconds`.
pub const MAX_DELAY_SECS: u64 = 900;
/// SQS's longest long poll.
pub const MAX_WAIT_SECS: u64 = 20;
/// How long a dead letter is kept: SQS's maximum, 14 days.
const DLQ_RETENTION_SECS: u64 = 14 * 24 * 3600;

/// The AWS adapter of [`Queue`].
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    queue_url: String,
    dead_letter_queue_url: String,
}

impl SqsQueue {
    pub fn new(
        client: Client,
        queue_url: impl Into<String>,
        dead_letter_queue_url: impl Into<String>,
    ) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
            dead_letter_queue_url: dead_letter_queue_url.into(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    pub fn dead_letter_queue_url(&self) -> &str {
        &self.dead_letter_queue_url
    }

    /// SQS long-polls in whole seconds: `wait` rounds *down* (a sub-second wait is a short
    /// poll), so a receive never waits longer than asked, as [`Queue::receive`] promises.
    async fn receive_from(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(wait.as_secs().min(MAX_WAIT_SECS) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| unavailable("ReceiveMessage", e))?;
        out.messages
            .unwrap_or_default()
            .into_iter()
            .map(received)
            .collect()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn received(m: Message) -> Result<ReceivedMessage, QueueError> {
    let missing =
        |what: &str| QueueError::Unavailable(format!("SQS returned a message without {what}"));
    let receive_count = m
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| missing("ApproximateReceiveCount"))?;
    Ok(ReceivedMessage {
        message_id: m.message_id.ok_or_else(|| missing("a MessageId"))?,
        receipt: m.receipt_handle.ok_or_else(|| missing("a ReceiptHandle"))?,
        body: m.body.unwrap_or_default(),
        receive_count,
    })
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .delay_seconds(ceil_secs(delay).min(MAX_DELAY_SECS) as i32)
            .send()
            .await
            .map_err(|e| match e {
                SdkError::ServiceError(ref s)
                    if matches!(s.err(), SendMessageError::InvalidMessageContents(_)) =>
                {
                    QueueError::Rejected(error_chain(&e))
                }
                e => unavailable("SendMessage", e),
            })?;
        out.message_id.ok_or_else(|| {
            QueueError::Unavailable("SendMessage answered without a MessageId".into())
        })
    }

    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_from(&self.queue_url, max, wait).await
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        delete_from(&self.client, &self.queue_url, receipt).await
    }

    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.receive_from(&self.dead_letter_queue_url, max, Duration::ZERO)
            .await
    }

    async fn redrive(&self, max: u32) -> Result<usize, QueueError> {
        let mut moved = 0usize;
        let max = max as usize;
        while moved < max {
            let batch = (max - moved).min(10) as u32;
            let dead = self
                .receive_from(&self.dead_letter_queue_url, batch, Duration::ZERO)
                .await?;
            if dead.is_empty() {
                break;
            }
            for m in dead {
                // Send first, then delete: a crash in between redrives twice at worst, and the
                // worker's idempotent claim absorbs that; the reverse order could lose it.
                self.send(&m.body, Duration::ZERO).await?;
                delete_from(&self.client, &self.dead_letter_queue_url, &m.receipt).await?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}

async fn delete_from(client: &Client, url: &str, receipt: &str) -> Result<(), QueueError> {
    client
        .delete_message()
        .queue_url(url)
        .receipt_handle(receipt)
        .send()
        .await
        .map_err(|e| match e {
            SdkError::ServiceError(ref s)
                if matches!(s.err(), DeleteMessageError::ReceiptHandleIsInvalid(_)) =>
            {
                QueueError::Rejected(error_chain(&e))
            }
            e => unavailable("DeleteMessage", e),
        })?;
    Ok(())
}

/// Create `{name}-dlq` and `{name}`, the main queue redriving to the dead-letter queue after
/// `max_receive_count` receives. Returns `(queue_url, dead_letter_queue_url)`. For tests and
/// local bootstrap; the SAM template creates the same pair on AWS.
pub async fn create_queue_pair(
    client: &Client,
    name: &str,
    visibility_timeout: Duration,
    max_receive_count: u32,
) -> Result<(String, String), QueueError> {
    let visibility = ceil_secs(visibility_timeout).to_string();
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::VisibilityTimeout, &visibility)
        .attributes(
            QueueAttributeName::MessageRetentionPeriod,
            DLQ_RETENTION_SECS.to_string(),
        )
        .send()
        .await
        .map_err(|e| unavailable("CreateQueue (dead-letter)", e))?
        .queue_url
        .ok_or_else(|| QueueError::Unavailable("CreateQueue answered without a QueueUrl".into()))?;
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| unavailable("GetQueueAttributes", e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| {
            QueueError::Unavailable("GetQueueAttributes answered without QueueArn".into())
        })?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": max_receive_count,
    })
    .to_string();
    let url = client
        .create_queue()
        .queue_name(name)
        .attributes(QueueAttributeName::VisibilityTimeout, visibility)
        .attributes(QueueAttributeName::RedrivePolicy, redrive)
        .send()
        .await
        .map_err(|e| unavailable("CreateQueue", e))?
        .queue_url
        .ok_or_else(|| QueueError::Unavailable("CreateQueue answered without a QueueUrl".into()))?;
    Ok((url, dlq_url))
}

fn unavailable<E>(op: &str, err: SdkError<E>) -> QueueError
where
    E: std::error::Error + 'static,
{
    QueueError::Unavailable(format!("SQS {op}: {}", error_chain(&err)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_round_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(200)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
