//! How outbound delivery behaves, read once at start-up (`OUTBOUND_*`, README's table): the
//! retry schedule and its jitter, the send timeout, the secret-rotation overlap, when a
//! failing endpoint is disabled.

use crate::config::{var, ConfigError};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct OutboundSettings {
    /// `OUTBOUND_RETRY_SCHEDULE`: the wait before each retry; one attempt plus one retry per
    /// entry (seed 003: `1m,5m,30m,2h,24h`).
    pub retry_schedule: Vec<Duration>,
    /// Each wait is moved by up to this fraction either way, so retries of many deliveries
    /// that failed together do not all come back at once.
    pub jitter: f64,
    /// `OUTBOUND_TIMEOUT`: how long one attempt may take (seed 003: 30 s).
    pub timeout: Duration,
    /// `OUTBOUND_SECRET_OVERLAP`: how long a rotated-out endpoint secret keeps signing.
    pub secret_overlap: Duration,
    /// `OUTBOUND_DISABLE_AFTER`: an endpoint whose attempts have all failed this long is
    /// disabled and its owner told.
    pub disable_after: Duration,
    /// The longest `Retry-After` honoured; a longer one waits this long.
    pub max_retry_after: Duration,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            retry_schedule: [60, 300, 1800, 7200, 86_400]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            jitter: 0.2,
            timeout: Duration::from_secs(30),
            secret_overlap: Duration::from_secs(24 * 3600),
            disable_after: Duration::from_secs(5 * 24 * 3600),
            max_retry_after: Duration::from_secs(6 * 3600),
        }
    }
}

impl OutboundSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(var)
    }

    /// From any variable source (the environment, a test's map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = Self::default();
        let duration = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            crate::config::present(lookup(name))
                .map(|v| {
                    parse_duration(&v).ok_or(ConfigError {
                        name,
                        expected: "a duration such as 30s, 5m, 2h or 1d",
                        value: v,
                    })
                })
                .transpose()
        };
        if let Some(raw) = crate::config::present(lookup("OUTBOUND_RETRY_SCHEDULE")) {
            s.retry_schedule = parse_schedule(&raw).ok_or(ConfigError {
                name: "OUTBOUND_RETRY_SCHEDULE",
                expected: "comma-separated durations such as 1m,5m,30m,2h,24h",
                value: raw,
            })?;
        }
        if let Some(d) = duration("OUTBOUND_TIMEOUT")? {
            s.timeout = d;
        }
        if let Some(d) = duration("OUTBOUND_SECRET_OVERLAP")? {
            s.secret_overlap = d;
        }
        if let Some(d) = duration("OUTBOUND_DISABLE_AFTER")? {
            s.disable_after = d;
        }
        Ok(s)
    }

    /// How many attempts a delivery gets before it is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        1 + self.retry_schedule.len() as u32
    }

    /// The wait after failed attempt `attempts` (1-based), jittered by `unit` in [-1, 1];
    /// `None` when it was the last.
    pub fn retry_delay(&self, attempts: u32, unit: f64) -> Option<Duration> {
        let base = *self.retry_schedule.get(attempts.checked_sub(1)? as usize)?;
        let factor = 1.0 + self.jitter * unit.clamp(-1.0, 1.0);
        Some(base.mul_f64(factor.max(0.0)))
    }
}

/// `90s`, `5m`, `2h`, `1d`, `250ms`, or a bare number of seconds.
pub fn parse_duration(raw: &str) -> Option<Duration> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    humantime::parse_duration(raw).ok()
}

fn parse_schedule(raw: &str) -> Option<Vec<Duration>> {
    raw.split(',').map(parse_duration).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<OutboundSettings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        OutboundSettings::from_lookup(|n| map.get(n).cloned())
    }

    #[test]
    fn the_default_schedule_is_seed_003s() {
        let s = from(&[]).unwrap();
        assert_eq!(s.max_attempts(), 6);
        let secs: Vec<u64> = s.retry_schedule.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [60, 300, 1800, 7200, 86_400]);
        assert_eq!(s.timeout, Duration::from_secs(30));
    }

    #[test]
    fn a_configured_schedule_and_durations_are_read() {
        let s = from(&[
            ("OUTBOUND_RETRY_SCHEDULE", "1s, 2s,500ms"),
            ("OUTBOUND_TIMEOUT", "2s"),
            ("OUTBOUND_SECRET_OVERLAP", "1h"),
            ("OUTBOUND_DISABLE_AFTER", "5d"),
        ])
        .unwrap();
        assert_eq!(
            s.retry_schedule,
            [1000, 2000, 500].map(Duration::from_millis)
        );
        assert_eq!(s.disable_after, Duration::from_secs(5 * 86_400));
        assert_eq!(s.secret_overlap, Duration::from_secs(3600));
        let err = from(&[("OUTBOUND_RETRY_SCHEDULE", "1m,soon")]).unwrap_err();
        assert_eq!(err.name, "OUTBOUND_RETRY_SCHEDULE");
    }

    #[test]
    fn retries_are_jittered_within_twenty_percent_and_end_after_the_schedule() {
        let s = OutboundSettings::default();
        assert_eq!(s.retry_delay(1, 0.0), Some(Duration::from_secs(60)));
        assert_eq!(s.retry_delay(1, 1.0), Some(Duration::from_secs(72)));
        assert_eq!(s.retry_delay(1, -1.0), Some(Duration::from_secs(48)));
        assert_eq!(s.retry_delay(5, 0.0), Some(Duration::from_secs(86_400)));
        assert_eq!(s.retry_delay(6, 0.0), None);
        assert_eq!(s.retry_delay(0, 0.0), None);
    }
}
