//! The embedded counter: a map in the process, for `hookline serve` (one process serves every
//! request, so nothing needs sharing) and fast tests. Nothing is written to the data dir: a
//! rate window is seconds to an hour long, and writing SQLite on every API request would cost
//! more than the requests it limits. A restart forgets the counts, as a new window would.

use super::{RateLimitError, RateLimiter, Window};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// Past this many windows held, the ended ones are dropped.
const PRUNE_AT: usize = 4096;

/// The embedded adapter of [`RateLimiter`].
#[derive(Debug)]
pub struct InProcessRateLimiter {
    state: Mutex<Counts>,
}

#[derive(Debug)]
struct Counts {
    by_window: HashMap<(String, Window), u64>,
    /// How many windows may be held before the ended ones are dropped: doubled when most are
    /// still current, so many busy orgs do not make every hit walk the map.
    prune_at: usize,
}

impl InProcessRateLimiter {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(Counts {
                by_window: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }
}

impl Default for InProcessRateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn hit(&self, org_id: &str, window: Window) -> Result<u64, RateLimitError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| RateLimitError::Unavailable("the counter's lock is poisoned".into()))?;
        if state.by_window.len() >= state.prune_at {
            // A window that ended before this one started is never counted again.
            state.by_window.retain(|(_, w), _| w.end() > window.start);
            state.prune_at = PRUNE_AT.max(state.by_window.len() * 2);
        }
        let count = state
            .by_window
            .entry((org_id.to_owned(), window))
            .or_insert(0);
        *count += 1;
        Ok(*count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    async fn fresh() -> ((), Arc<dyn RateLimiter>) {
        ((), Arc::new(InProcessRateLimiter::new()))
    }

    crate::ratelimit_conformance!(fresh());

    #[tokio::test]
    async fn ended_windows_are_dropped_once_many_are_held_and_current_ones_kept() {
        let limiter = InProcessRateLimiter::new();
        let old = Window {
            start: 1_800_000_000,
            length_secs: 60,
        };
        for n in 0..PRUNE_AT {
            limiter.hit(&format!("org-{n}"), old).await.unwrap();
        }
        let now = Window {
            start: old.end(),
            length_secs: 60,
        };
        limiter.hit("org-busy", now).await.unwrap();
        limiter.hit("org-busy", now).await.unwrap();
        let held = limiter.state.lock().unwrap().by_window.len();
        assert_eq!(held, 1, "only the current window is left");
        assert_eq!(limiter.hit("org-busy", now).await.unwrap(), 3);
    }
}
