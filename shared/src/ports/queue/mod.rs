//! The queue between the inbound pipeline and the worker: send with delay, receive with a
//! visibility timeout, delete, and a dead-letter queue after the redrive limit.

use async_trait::async_trait;
use std::time::Duration;

pub mod aws;
pub mod conformance;
pub mod embedded;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    #[error("message rejected: {0}")]
    Rejected(String),
}

/// How a queue is configured (on SQS: its attributes and redrive policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// How long a received message stays hidden before it is handed out again.
    pub visibility_timeout: Duration,
    /// Receipts after which the message moves to the dead-letter queue.
    pub max_receive_count: u32,
}

/// A message handed out by [`Queue::receive`]; invisible to others until its visibility
/// timeout ends or it is deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    /// The handle to delete (or release) this receipt of the message.
    pub receipt: String,
    pub body: String,
    /// 1 on first receipt; the message moves to the dead-letter queue instead of being
    /// received a `max_receive_count + 1`-th time.
    pub receive_count: u32,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Enqueue; the message becomes visible after `delay` (at most 15 minutes, as on SQS).
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError>;

    /// Up to `max` (1..=10) visible messages, waiting up to `wait` for the first.
    async fn receive(&self, max: u32, wait: Duration) -> Result<Vec<ReceivedMessage>, QueueError>;

    async fn delete(&self, receipt: &str) -> Result<(), QueueError>;

    /// Up to `max` messages from the dead-letter queue (each hidden for a visibility timeout).
    async fn receive_dead_letters(&self, max: u32) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Move up to `max` dead letters back to the main queue, with a fresh receive count.
    async fn redrive(&self, max: u32) -> Result<usize, QueueError>;
}
