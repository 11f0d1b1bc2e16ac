//! The per-org rate limit of the authenticated `/api/v1` routes (`HOOKLINE_API_RATE_LIMIT`,
//! default `600/min`): a fixed window per org, counted by the [`RateLimiter`] port so that
//! every Lambda serving the org counts into one number. The provider webhook routes are never
//! behind it: a verified delivery is never refused for a rate (issue 9).
//!
//! Only a request whose bearer token verifies is counted, against the token's org; anything
//! else goes on to its route, which answers the 401 itself. Answers of counted requests carry
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; past the limit the route is
//! not run and the answer is `429` with `Retry-After`.

use crate::auth::{bearer_token, Authenticator, Principal};
use crate::clock::Clock;
use crate::config::ConfigError;
use crate::http::{problem, Response};
use crate::ports::ratelimit::{RateLimiter, Window};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// The variable that sets the limit.
pub const VAR: &str = "HOOKLINE_API_RATE_LIMIT";

const EXPECTED: &str = "a number of requests per org per s, min, h or d, such as 600/min, \
                        10/s or 36000/h; or off (or 0) for no limit";

/// How long the counter may take before a request goes on uncounted (see [`ApiRateLimit`]).
pub const COUNTER_TIMEOUT: Duration = Duration::from_secs(1);

pub static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// How many requests an org may make per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub window_secs: u64,
}

impl Rate {
    /// The limit when the variable is not set.
    pub const DEFAULT: Rate = Rate {
        limit: 600,
        window_secs: 60,
    };

    /// `600/min`, `10/s`, `36000/h`, `5000/day` (units `s`, `sec`, `second`, `m`, `min`,
    /// `minute`, `h`, `hr`, `hour`, `d`, `day`, plurals too); `None` for `off` or `0`.
    pub fn parse(text: &str) -> Result<Option<Rate>, ConfigError> {
        let bad = || ConfigError {
            name: VAR,
            expected: EXPECTED,
            value: text.to_owned(),
        };
        let text_lc = text.trim().to_ascii_lowercase();
        if text_lc == "off" || text_lc == "0" {
            return Ok(None);
        }
        let (count, unit) = text_lc.split_once('/').ok_or_else(bad)?;
        let limit: u64 = count.trim().parse().map_err(|_| bad())?;
        let unit = unit.trim();
        // Plurals (`secs`, `minutes`, `hrs`), but `ms` is not minutes.
        let unit = match unit.strip_suffix('s') {
            Some(singular) if unit.len() > 2 => singular,
            _ => unit,
        };
        let window_secs = match unit {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hr" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(bad()),
        };
        // `0/min` reads as "refuse everything", which nobody means: off is said as `off`.
        if limit == 0 {
            return Err(bad());
        }
        Ok(Some(Rate { limit, window_secs }))
    }

    /// The rate from `lookup`'s `HOOKLINE_API_RATE_LIMIT` ([`Rate::DEFAULT`] when unset or
    /// blank); `None` when it turns the limit off.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Rate>, ConfigError> {
        match crate::config::present(lookup(VAR)) {
            None => Ok(Some(Rate::DEFAULT)),
            Some(text) => Rate::parse(&text),
        }
    }

    /// "600 requests per minute", for messages.
    pub fn describe(&self) -> String {
        let per = match self.window_secs {
            1 => "second".to_owned(),
            60 => "minute".to_owned(),
            3600 => "hour".to_owned(),
            86_400 => "day".to_owned(),
            secs => format!("{secs} seconds"),
        };
        let requests = if self.limit == 1 {
            "request"
        } else {
            "requests"
        };
        format!("{} {requests} per {per}", self.limit)
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.window_secs {
            1 => write!(f, "{}/s", self.limit),
            60 => write!(f, "{}/min", self.limit),
            3600 => write!(f, "{}/h", self.limit),
            86_400 => write!(f, "{}/day", self.limit),
            secs => write!(f, "{}/{secs}s", self.limit),
        }
    }
}

/// Where an org stands in its current window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    /// Requests left in the window after this one.
    pub remaining: u64,
    /// Whole seconds (at least 1) until the window ends and the count starts again.
    pub reset_secs: u64,
}

impl Quota {
    /// Add the `RateLimit-*` headers.
    pub fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(self.limit));
        headers.insert(
            RATELIMIT_REMAINING.clone(),
            HeaderValue::from(self.remaining),
        );
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(self.reset_secs));
    }

    /// The 429 for a request past the limit, saying when to come back.
    pub fn refusal(&self, rate: Rate) -> Response {
        let mut res = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this organisation has used its {} on the Hookline API; try again in {} s",
                rate.describe(),
                self.reset_secs
            ),
        );
        self.stamp(res.headers_mut());
        res.headers_mut().insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(self.reset_secs),
        );
        res
    }
}

/// What the limit makes of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not counted: no verified token (the route answers 401), or the counter failed.
    Uncounted,
    /// Counted and within the limit: serve it, with these headers.
    Within(Quota),
    /// Past the limit: answer 429.
    Over(Quota),
}

/// The limit in front of the authenticated API routes. Build it once per cold start (or local
/// server) and share it.
///
/// A counter that fails or takes longer than [`COUNTER_TIMEOUT`] lets the request through
/// uncounted (fail open): the limit shields capacity, not data — every route still checks the
/// token, its scopes and the org's plan — and refusing every org's calls while DynamoDB
/// hiccups would turn a limiter fault into an API outage. Each such request is logged.
pub struct ApiRateLimit {
    rate: Rate,
    auth: Authenticator,
    counter: Arc<dyn RateLimiter>,
    clock: Arc<dyn Clock>,
    timeout: Duration,
}

impl ApiRateLimit {
    /// `rate` per org, counted by `counter`, for tokens `auth` verifies.
    pub fn new(
        rate: Rate,
        auth: Authenticator,
        counter: Arc<dyn RateLimiter>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            rate,
            auth,
            counter,
            clock,
            timeout: COUNTER_TIMEOUT,
        }
    }

    /// Give the counter `timeout` instead of [`COUNTER_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Count the request if its bearer token verifies, and say whether it may be served.
    pub async fn check(&self, headers: &HeaderMap) -> Verdict {
        self.judge(headers).await.0
    }

    /// [`ApiRateLimit::check`], with the principal it counted (`None` when uncounted).
    async fn judge(&self, headers: &HeaderMap) -> (Verdict, Option<Principal>) {
        let verified = match bearer_token(headers) {
            Ok(token) => self.auth.verify(token).await.ok(),
            Err(_) => None,
        };
        match verified {
            Some(principal) => (self.count(&principal).await, Some(principal)),
            None => (Verdict::Uncounted, None),
        }
    }

    /// Count a request of `principal`'s org and say whether it may be served.
    async fn count(&self, principal: &Principal) -> Verdict {
        let org = principal.org_id.as_str();
        let now = self.clock.now();
        let window = Window::containing(now, self.rate.window_secs);
        let count = match tokio::time::timeout(self.timeout, self.counter.hit(org, window)).await {
            Ok(Ok(count)) => count,
            Ok(Err(e)) => {
                tracing::error!(error = %e, org, "API rate limit not applied: the counter failed");
                return Verdict::Uncounted;
            }
            Err(_) => {
                tracing::error!(
                    org,
                    timeout_ms = self.timeout.as_millis() as u64,
                    "API rate limit not applied: the counter did not answer in time"
                );
                return Verdict::Uncounted;
            }
        };
        let until_reset_ms = (window.end() * 1000 - now.timestamp_millis()).max(1) as u64;
        let quota = Quota {
            limit: self.rate.limit,
            remaining: self.rate.limit.saturating_sub(count),
            reset_secs: until_reset_ms.div_ceil(1000),
        };
        if count <= self.rate.limit {
            return Verdict::Within(quota);
        }
        if count == self.rate.limit + 1 {
            // Once per org and window, not once per refused request.
            tracing::warn!(org, rate = %self.rate, "an org reached its API rate limit");
        }
        Verdict::Over(quota)
    }

    /// Serve `req` with `route` if the org is within its limit (adding the `RateLimit-*`
    /// headers), else answer 429 without running it.
    /// The principal verified here goes to the route with the request, so the route does not
    /// verify the token again (`Authenticator::authenticate_request`).
    pub async fn serve<B, Fut>(
        &self,
        mut req: http::Request<B>,
        route: impl FnOnce(http::Request<B>) -> Fut,
    ) -> Response
    where
        Fut: Future<Output = Response>,
    {
        let (verdict, principal) = self.judge(req.headers()).await;
        if let Some(principal) = principal {
            req.extensions_mut().insert(self.auth.vouch(principal));
        }
        match verdict {
            Verdict::Over(quota) => quota.refusal(self.rate),
            Verdict::Within(quota) => {
                let mut res = route(req).await;
                quota.stamp(res.headers_mut());
                res
            }
            Verdict::Uncounted => route(req).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{LocalIssuer, OrgId, Scope, UserId, VerifiedPrincipal};
    use crate::clock::ManualClock;
    use crate::ports::ratelimit::embedded::InProcessRateLimiter;

    #[test]
    fn rates_read_in_the_forms_people_write_them() {
        let rate = |limit, window_secs| Ok(Some(Rate { limit, window_secs }));
        for (text, expected) in [
            ("600/min", rate(600, 60)),
            ("10/s", rate(10, 1)),
            ("36000/h", rate(36000, 3600)),
            ("5000/day", rate(5000, 86_400)),
            (" 120 / minute ", rate(120, 60)),
            ("2/SECONDS", rate(2, 1)),
            ("7/sec", rate(7, 1)),
            ("100/hours", rate(100, 3600)),
            ("100/hrs", rate(100, 3600)),
            ("3/mins", rate(3, 60)),
            ("9/days", rate(9, 86_400)),
            ("1/m", rate(1, 60)),
            ("off", Ok(None)),
            ("OFF", Ok(None)),
            ("0", Ok(None)),
        ] {
            assert_eq!(
                Rate::parse(text).map_err(|e| e.to_string()),
                expected,
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_malformed_rate_is_an_error_naming_the_variable_and_the_forms() {
        for text in [
            "600",
            "lots",
            "600/fortnight",
            "-5/min",
            "1.5/s",
            "/min",
            "600/",
            "0/min",
            "600/min/s",
            "600/ms",
            "600/ss",
            "99999999999999999999/min",
        ] {
            let e = Rate::parse(text).expect_err(text).to_string();
            assert!(e.starts_with("HOOKLINE_API_RATE_LIMIT must be"), "{e}");
            assert!(e.contains("600/min") && e.contains("off"), "{e}");
            assert!(e.contains(&format!("{text:?}")), "names the value: {e}");
        }
    }

    #[test]
    fn unset_means_600_a_minute() {
        assert_eq!(Rate::from_lookup(|_| None).unwrap(), Some(Rate::DEFAULT));
        assert_eq!(
            Rate::from_lookup(|_| Some("  ".into())).unwrap(),
            Some(Rate::DEFAULT)
        );
        assert_eq!(Rate::from_lookup(|_| Some("off".into())).unwrap(), None);
        assert_eq!(Rate::DEFAULT.to_string(), "600/min");
        assert_eq!(Rate::DEFAULT.describe(), "600 requests per minute");
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        issuer: LocalIssuer,
        clock: Arc<ManualClock>,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let issuer = LocalIssuer::open(dir.path()).unwrap();
            // 15 s into a minute.
            let clock = Arc::new(ManualClock::at_unix(1_800_000_015));
            Self {
                _dir: dir,
                issuer,
                clock,
            }
        }

        fn limit(&self, rate: Rate, counter: Arc<dyn RateLimiter>) -> ApiRateLimit {
            ApiRateLimit::new(
                rate,
                self.issuer.authenticator(),
                counter,
                self.clock.clone(),
            )
        }

        fn headers(&self, org: &str) -> HeaderMap {
            let token = self.issuer.issue(
                &OrgId::from(org),
                &UserId::from("user-1"),
                &[Scope::ReposRead].into_iter().collect(),
                Duration::from_secs(600),
            );
            let mut h = HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
            );
            h
        }
    }

    fn rate(limit: u64, window_secs: u64) -> Rate {
        Rate { limit, window_secs }
    }

    #[tokio::test]
    async fn the_route_is_handed_the_principal_the_limit_verified() {
        let f = Fixture::new();
        let auth = f.issuer.authenticator();
        let limit = ApiRateLimit::new(
            rate(3, 60),
            auth.clone(),
            Arc::new(InProcessRateLimiter::new()),
            f.clock.clone(),
        );
        let other = f.issuer.authenticator();
        let mut req = http::Request::new(());
        *req.headers_mut() = f.headers("org-a");
        let res = limit
            .serve(req, |mut req| async move {
                let handed = req.extensions().get::<VerifiedPrincipal>().cloned();
                assert_eq!(
                    handed.map(|v| v.principal.org_id),
                    Some(OrgId::from("org-a"))
                );
                // The route reads it without the token: nothing is verified twice.
                req.headers_mut().remove(http::header::AUTHORIZATION);
                let principal = auth.authenticate_request(&req).await.unwrap();
                assert_eq!(principal.org_id, OrgId::from("org-a"));
                // A route with an authenticator of its own does not take the limit's word.
                assert!(other.authenticate_request(&req).await.is_err());
                problem(StatusCode::OK, "served", "served")
            })
            .await;
        assert_eq!(res.status(), StatusCode::OK);
        // A request without a token reaches the route with nothing handed over.
        let res = limit
            .serve(http::Request::new(()), |req| async move {
                assert!(req.extensions().get::<VerifiedPrincipal>().is_none());
                problem(StatusCode::UNAUTHORIZED, "unauthorized", "no token")
            })
            .await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn an_org_gets_its_limit_then_429_until_the_window_ends() {
        let f = Fixture::new();
        let limit = f.limit(rate(3, 60), Arc::new(InProcessRateLimiter::new()));
        let a = f.headers("org-a");
        for remaining in [2, 1, 0] {
            assert_eq!(
                limit.check(&a).await,
                Verdict::Within(Quota {
                    limit: 3,
                    remaining,
                    reset_secs: 45
                })
            );
        }
        let over = Quota {
            limit: 3,
            remaining: 0,
            reset_secs: 45,
        };
        assert_eq!(limit.check(&a).await, Verdict::Over(over));
        f.clock.advance(chrono::Duration::milliseconds(44_500));
        assert!(matches!(
            limit.check(&a).await,
            Verdict::Over(Quota { reset_secs: 1, .. })
        ));
        f.clock.advance(chrono::Duration::milliseconds(500));
        assert_eq!(
            limit.check(&a).await,
            Verdict::Within(Quota {
                limit: 3,
                remaining: 2,
                reset_secs: 60
            }),
            "a new minute, a new count"
        );
    }

    #[tokio::test]
    async fn one_orgs_burst_leaves_another_org_its_whole_limit() {
        let f = Fixture::new();
        let limit = f.limit(rate(2, 1), Arc::new(InProcessRateLimiter::new()));
        let (a, b) = (f.headers("org-a"), f.headers("org-b"));
        for _ in 0..50 {
            limit.check(&a).await;
        }
        assert!(matches!(limit.check(&a).await, Verdict::Over(_)));
        assert!(matches!(
            limit.check(&b).await,
            Verdict::Within(Quota { remaining: 1, .. })
        ));
    }

    #[tokio::test]
    async fn requests_without_a_verified_token_are_not_counted() {
        let f = Fixture::new();
        let counter = Arc::new(InProcessRateLimiter::new());
        let limit = f.limit(rate(1, 60), counter.clone());
        let mut forged = HeaderMap::new();
        // A token for org-a signed by another key.
        let other = Fixture::new().headers("org-a");
        forged.insert(
            http::header::AUTHORIZATION,
            other[http::header::AUTHORIZATION].clone(),
        );
        let mut garbage = HeaderMap::new();
        garbage.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer not.a.jwt"),
        );
        for headers in [HeaderMap::new(), forged, garbage] {
            for _ in 0..5 {
                assert_eq!(limit.check(&headers).await, Verdict::Uncounted);
            }
        }
        assert!(
            matches!(limit.check(&f.headers("org-a")).await, Verdict::Within(_)),
            "forged tokens for org-a used none of its budget"
        );
    }

    #[tokio::test]
    async fn the_429_says_when_to_come_back_and_the_route_is_not_run() {
        let f = Fixture::new();
        let limit = f.limit(rate(1, 60), Arc::new(InProcessRateLimiter::new()));
        let req = |org: &str| {
            let mut req = http::Request::new(bytes::Bytes::new());
            *req.headers_mut() = f.headers(org);
            req
        };
        let ok = limit
            .serve(req("org-a"), |_| async {
                crate::http::json(StatusCode::OK, &serde_json::json!({"ok": true}))
            })
            .await;
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["ratelimit-limit"], "1");
        assert_eq!(ok.headers()["ratelimit-remaining"], "0");
        assert_eq!(ok.headers()["ratelimit-reset"], "45");
        assert!(ok.headers().get("retry-after").is_none());

        let ran = std::sync::atomic::AtomicBool::new(false);
        let refused = limit
            .serve(req("org-a"), |_| async {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                crate::http::json(StatusCode::OK, &serde_json::json!({}))
            })
            .await;
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "45");
        assert_eq!(refused.headers()["ratelimit-remaining"], "0");
        assert_eq!(refused.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_slice(refused.body()).unwrap();
        assert_eq!(body["error"], "rate_limited");
        assert_eq!(
            body["message"],
            "this organisation has used its 1 request per minute on the Hookline API; try again in 45 s"
        );
    }
}
