//! The behaviour every [`RateLimiter`] adapter must have. The in-process counter and the
//! DynamoDB counter run these through [`ratelimit_conformance!`](crate::ratelimit_conformance),
//! each test on a fresh, empty counter.

use super::{RateLimiter, Window};
use std::collections::BTreeSet;
use std::sync::Arc;

/// The current minute's window, so a stored count's expiry lies in the future.
pub fn this_minute() -> Window {
    Window::containing(chrono::Utc::now(), 60)
}

pub async fn each_hit_in_a_window_counts_one_more(limiter: &dyn RateLimiter) {
    let w = this_minute();
    for expected in 1..=5 {
        assert_eq!(limiter.hit("org-a", w).await.unwrap(), expected);
    }
}

pub async fn the_next_window_counts_from_one_again(limiter: &dyn RateLimiter) {
    let w = this_minute();
    for _ in 0..3 {
        limiter.hit("org-a", w).await.unwrap();
    }
    let next = Window {
        start: w.end(),
        ..w
    };
    assert_eq!(limiter.hit("org-a", next).await.unwrap(), 1);
    assert_eq!(limiter.hit("org-a", next).await.unwrap(), 2);
}

pub async fn orgs_and_window_lengths_are_counted_apart(limiter: &dyn RateLimiter) {
    let minute = this_minute();
    for _ in 0..4 {
        limiter.hit("org-a", minute).await.unwrap();
    }
    assert_eq!(
        limiter.hit("org-b", minute).await.unwrap(),
        1,
        "another org's burst is not this org's"
    );
    // Ids that would collide if keys were joined naively stay apart.
    for org in ["org-a#60", "org-a%23", "org-a#", "ORG#org-a", ""] {
        assert_eq!(limiter.hit(org, minute).await.unwrap(), 1, "{org:?}");
    }
    // The same start under another length (the limit was reconfigured) is another window.
    let hour = Window {
        start: minute.start,
        length_secs: 3600,
    };
    assert_eq!(limiter.hit("org-a", hour).await.unwrap(), 1);
    assert_eq!(limiter.hit("org-a", minute).await.unwrap(), 5);
}

pub async fn concurrent_hits_each_get_their_own_count(limiter: Arc<dyn RateLimiter>) {
    const HITS: u64 = 40;
    let w = this_minute();
    let hits = (0..HITS).map(|_| {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.hit("org-a", w).await.unwrap() })
    });
    let counts: BTreeSet<u64> = futures::future::join_all(hits)
        .await
        .into_iter()
        .map(|r| r.expect("the hit task finishes"))
        .collect();
    assert_eq!(
        counts,
        (1..=HITS).collect::<BTreeSet<u64>>(),
        "no two concurrent hits saw the same count, none was lost"
    );
}

/// Generates one `#[tokio::test]` per conformance case. `$make` is an async expression
/// yielding `(guard, Arc<dyn RateLimiter>)` for a fresh, empty counter; the guard lives for
/// the test (a table).
#[macro_export]
macro_rules! ratelimit_conformance {
    ($make:expr) => {
        mod ratelimit_conformance {
            #[allow(unused_imports)]
            use super::*;
            use $crate::ports::ratelimit::conformance as c;

            macro_rules! case {
                ($name:ident, $takes:ident) => {
                    $crate::conformance_case!($make, $name, $takes);
                };
            }

            case!(each_hit_in_a_window_counts_one_more, borrowed);
            case!(the_next_window_counts_from_one_again, borrowed);
            case!(orgs_and_window_lengths_are_counted_apart, borrowed);
            case!(concurrent_hits_each_get_their_own_count, shared);
        }
    };
}
