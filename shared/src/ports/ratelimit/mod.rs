//! The rate-limit counter: how many requests an org made in one fixed time window, counted
//! once across every process that serves it. A DynamoDB item per (org, window) on AWS
//! (`aws.rs`), a map in the process locally (`embedded.rs`). The policy — the limit, the
//! window for a given time, the answer and its headers — is `api::ratelimit`'s.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub mod aws;
pub mod conformance;
pub mod embedded;

/// One fixed window: from `start` for `length_secs` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// Epoch seconds, a multiple of `length_secs`.
    pub start: i64,
    pub length_secs: u64,
}

impl Window {
    /// The window of `length_secs` seconds that holds `at`.
    pub fn containing(at: DateTime<Utc>, length_secs: u64) -> Self {
        let length = length_secs.max(1) as i64;
        Self {
            start: at.timestamp().div_euclid(length) * length,
            length_secs: length as u64,
        }
    }

    /// Epoch seconds at which the next window starts.
    pub fn end(&self) -> i64 {
        self.start + self.length_secs as i64
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The counter could not be reached or answered something unreadable.
    #[error("rate-limit counter unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Count one request of `org_id` in `window`: how many it has made there, this one
    /// included. Of concurrent calls each gets its own count (atomic, across processes).
    async fn hit(&self, org_id: &str, window: Window) -> Result<u64, RateLimitError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_starts_on_a_multiple_of_its_length() {
        let at = DateTime::from_timestamp(1_800_000_059, 999_000_000).unwrap();
        assert_eq!(
            Window::containing(at, 60),
            Window {
                start: 1_800_000_000,
                length_secs: 60
            }
        );
        assert_eq!(Window::containing(at, 60).end(), 1_800_000_060);
        let next = DateTime::from_timestamp(1_800_000_060, 0).unwrap();
        assert_eq!(Window::containing(next, 60).start, 1_800_000_060);
        assert_eq!(Window::containing(at, 3600).start, 1_800_000_000);
        let hour_later = DateTime::from_timestamp(1_800_003_599, 0).unwrap();
        assert_eq!(Window::containing(hour_later, 3600).start, 1_800_000_000);
        assert_eq!(Window::containing(at, 1).start, 1_800_000_059);
    }
}
