//! The HTTP sender of outbound deliveries: one pooled client whose DNS goes through the SSRF
//! policy, so a socket only ever opens to an address that was checked; redirects are not
//! followed, and each attempt comes back as a [`SendOutcome`] to record.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

use super::ssrf::{AddressPolicy, Refused};

/// What identifies Hookline's requests to the receiver.
pub const USER_AGENT: &str = concat!(
    "Hookline-Webhooks/",
    env!("CARGO_PKG_VERSION"),
    " (+https://github.com/hookline)"
);

/// How much of a response body an attempt records.
pub const RECORDED_BODY_BYTES: usize = 1024;
/// How much of a response body is read at most; past it the connection is dropped, so a
/// receiver answering gigabytes cannot eat the deliverer's memory.
pub const MAX_READ_BYTES: usize = 64 * 1024;
/// The longest `Retry-After` the sender reports (the caller bounds it further).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// One attempt's result, as the deliverer records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendOutcome {
    /// The receiver's status code; `None` when no response came.
    pub status: Option<u16>,
    pub duration_ms: u64,
    /// The first [`RECORDED_BODY_BYTES`] of the response body, as lossy UTF-8; `None` when
    /// the response had no body or none came.
    pub response_body: Option<String>,
    /// Why the attempt failed (`None` on success).
    pub error: Option<String>,
    /// The receiver's `Retry-After` on a 429 or 503.
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// The SSRF policy refused the URL or what it resolved to: nothing was sent.
    pub refused: bool,
    /// No answer came within the timeout.
    #[serde(skip)]
    pub timed_out: bool,
}

impl SendOutcome {
    /// Only a 2xx is a success; a 3xx is a redirect Hookline does not follow.
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    /// How the attempt ended, as the attempts metric counts it.
    pub fn outcome(&self) -> crate::telemetry::AttemptOutcome {
        use crate::telemetry::AttemptOutcome;
        if self.succeeded() {
            AttemptOutcome::Delivered
        } else if self.refused {
            AttemptOutcome::Refused
        } else if self.timed_out {
            AttemptOutcome::Timeout
        } else {
            AttemptOutcome::Failed
        }
    }

    fn failed(started: Instant, error: Failure) -> Self {
        Self {
            status: None,
            duration_ms: elapsed_ms(started),
            response_body: None,
            error: Some(error.why),
            retry_after: None,
            refused: error.refused,
            timed_out: error.timed_out,
        }
    }
}

/// Why a request got no response.
struct Failure {
    why: String,
    refused: bool,
    timed_out: bool,
}

impl Failure {
    fn new(why: String) -> Self {
        Self {
            why,
            refused: false,
            timed_out: false,
        }
    }

    fn refused(why: String) -> Self {
        Self {
            refused: true,
            ..Self::new(why)
        }
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// reqwest's DNS hook: every name goes through the policy, and only the addresses it checked
/// come back, so the connection opens to one of them (no rebinding window).
struct PolicyResolver(Arc<AddressPolicy>);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port on each address.
            let addrs: Vec<SocketAddr> = policy.resolve_name(&host, &host, 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// Sends deliveries. Build one per process and share it: it holds the connection pool.
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
    timeout: Duration,
}

impl Sender {
    pub fn new(policy: AddressPolicy, timeout: Duration) -> Self {
        let policy = Arc::new(policy);
        let mut defaults = HeaderMap::new();
        defaults.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .default_headers(defaults)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the name itself, past the policy.
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            .timeout(timeout)
            .build()
            // Only a TLS backend that cannot initialise fails here: nothing could be sent.
            .expect("the HTTP client builds with rustls");
        Self {
            client,
            policy,
            timeout,
        }
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// POST `body` to `url` with `headers` (the signatures) and report what happened. Never
    /// fails: every outcome, including a refusal, is an attempt to record.
    pub async fn post(
        &self,
        url: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    ) -> SendOutcome {
        let started = Instant::now();
        // Literal addresses never reach the DNS hook: the URL check judges them.
        let url = match self.policy.check_url(url) {
            Ok(url) => url,
            Err(refused) => {
                return SendOutcome::failed(
                    started,
                    Failure::refused(format!("refused: {}", refused.reason())),
                )
            }
        };
        let mut map = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            map.append(name, value);
        }
        let sent = self
            .client
            .post(url.clone())
            .headers(map)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                let failure = self.describe(&e);
                tracing::debug!(url = %super::ssrf::display(&url), error = %failure.why, "outbound attempt failed");
                return SendOutcome::failed(started, failure);
            }
        };

        let status = response.status();
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                retry_after(response.headers(), chrono::Utc::now())
            }
            _ => None,
        };
        let body = read_capped(response, MAX_READ_BYTES).await;
        let error = if status.is_success() {
            None
        } else if status.is_redirection() {
            Some(format!("redirect ({}) not followed", status.as_u16()))
        } else {
            Some(format!("HTTP {}", status.as_u16()))
        };
        SendOutcome {
            status: Some(status.as_u16()),
            duration_ms: elapsed_ms(started),
            response_body: recorded_body(&body),
            error,
            retry_after,
            refused: false,
            timed_out: false,
        }
    }

    /// A short cause for a request that got no response, without the URL (it may hold a token).
    fn describe(&self, e: &reqwest::Error) -> Failure {
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        let mut io_kind = None;
        let mut innermost = None;
        while let Some(cause) = source {
            if let Some(refused) = cause.downcast_ref::<Refused>() {
                return if refused.by_policy() {
                    Failure::refused(format!("refused: {}", refused.reason()))
                } else {
                    Failure::new(refused.reason().to_owned())
                };
            }
            if let Some(io) = cause.downcast_ref::<std::io::Error>() {
                io_kind.get_or_insert(io.kind());
            }
            innermost = Some(cause);
            source = cause.source();
        }
        if e.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
            return Failure {
                timed_out: true,
                ..Failure::new(format!("timed out after {}", human(self.timeout)))
            };
        }
        let error = match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_owned(),
            Some(std::io::ErrorKind::ConnectionReset) => "connection reset".to_owned(),
            _ => match innermost {
                Some(cause) if e.is_connect() => format!("connection failed: {cause}"),
                Some(cause) => format!("request failed: {cause}"),
                None => "request failed".to_owned(),
            },
        };
        Failure::new(error)
    }
}

/// `30s`, `300ms`, `1.5s`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Read at most `cap` bytes of the body, then stop (dropping the rest and the connection). A
/// body that fails midway keeps what arrived: the status already decided the attempt.
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < cap {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(cap - body.len());
                body.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    body
}

/// The first [`RECORDED_BODY_BYTES`] as text, cut at a character boundary when the cut falls
/// inside one.
fn recorded_body(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let mut head = &body[..body.len().min(RECORDED_BODY_BYTES)];
    if head.len() < body.len() {
        if let Err(e) = std::str::from_utf8(head) {
            if e.error_len().is_none() {
                head = &head[..e.valid_up_to()];
            }
        }
    }
    Some(String::from_utf8_lossy(head).into_owned())
}

/// `Retry-After` as delay-seconds or an HTTP-date, capped at a week.
fn retry_after(headers: &HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(60)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:00:00 GMT"),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("99999999999"));
        assert_eq!(retry_after(&h, now), Some(MAX_RETRY_AFTER));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn the_recorded_body_is_cut_at_1_kib_on_a_character_boundary() {
        assert_eq!(recorded_body(b""), None);
        assert_eq!(recorded_body(b"ok").as_deref(), Some("ok"));
        let mut body = vec![b'a'; RECORDED_BODY_BYTES - 1];
        body.extend_from_slice("é and more".as_bytes());
        let recorded = recorded_body(&body).unwrap();
        assert_eq!(recorded.len(), RECORDED_BODY_BYTES - 1);
        assert!(recorded.bytes().all(|b| b == b'a'));
        assert_eq!(recorded_body(&[0xff, b'x']).as_deref(), Some("\u{fffd}x"));
    }

    #[test]
    fn durations_read_the_way_people_write_them() {
        assert_eq!(human(Duration::from_secs(30)), "30s");
        assert_eq!(human(Duration::from_millis(300)), "300ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
    }

    #[test]
    fn the_user_agent_names_hookline_and_its_version() {
        assert!(
            USER_AGENT.starts_with(&format!("Hookline-Webhooks/{} ", env!("CARGO_PKG_VERSION")))
        );
    }
}
