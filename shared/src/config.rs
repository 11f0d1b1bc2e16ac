//! Settings read once at start-up from the environment (names in the README's table).

use std::time::Duration;

/// How the inbound pipeline and the worker behave.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `WEBHOOK_BASE_URL`: the public URL providers post to (Twilio's signatures cover it).
    pub public_base_url: Option<String>,
    /// `HOOKLINE_MAX_BODY_BYTES`: larger bodies get 413.
    pub max_body_bytes: usize,
    /// `HOOKLINE_DELIVERY_TTL_HOURS`: how long a delivery record (and so its dedupe) lives.
    pub delivery_ttl: Duration,
    /// How long the request that recorded a delivery owns its enqueue before a provider's
    /// retry may take it over.
    pub enqueue_lease: Duration,
    /// How long a concurrent copy of a delivery waits for the first copy's outcome.
    pub in_progress_wait: Duration,
    /// `HOOKLINE_PROCESS_LEASE_SECS`: how long a worker owns a delivery it started on; match
    /// the queue's visibility timeout.
    pub process_lease: Duration,
    /// `HOOKLINE_PAYLOAD_RETENTION`: how long a delivery's payload and headers are kept for
    /// the delivery log API and replays.
    pub payload_retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            public_base_url: None,
            max_body_bytes: 1024 * 1024,
            delivery_ttl: Duration::from_secs(7 * 24 * 3600),
            enqueue_lease: Duration::from_secs(30),
            in_progress_wait: Duration::from_secs(2),
            process_lease: Duration::from_secs(180),
            payload_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{name} must be {expected}, got {value:?}")]
pub struct ConfigError {
    pub name: &'static str,
    pub expected: &'static str,
    pub value: String,
}

/// A setting's value as every reader takes it: unset or blank is `None`.
pub fn present<S: AsRef<str>>(value: Option<S>) -> Option<S> {
    value.filter(|v| !v.as_ref().trim().is_empty())
}

/// Read a variable; unset or empty is `None`.
pub fn var(name: &str) -> Option<String> {
    present(std::env::var(name).ok())
}

/// A required variable, with an error that names it.
pub fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError {
        name,
        expected: "set",
        value: String::new(),
    })
}

fn number(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<u64>, ConfigError> {
    present(lookup(name))
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| ConfigError {
                name,
                expected: "a whole number",
                value: v,
            })
        })
        .transpose()
}

impl Settings {
    /// How long a delivery record lives: `delivery_ttl`, but never less than the payload's
    /// retention plus as long again (at most a day), so a replay of an expired payload finds
    /// its record and answers 410, and a payload is never kept where no record can reach it.
    pub fn record_ttl(&self) -> Duration {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        let floor = self.payload_retention + self.payload_retention.min(DAY);
        self.delivery_ttl.max(floor)
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(var)
    }

    /// The settings from `lookup` (unset or blank is `None`) instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut s = Settings {
            public_base_url: present(lookup("WEBHOOK_BASE_URL")),
            ..Settings::default()
        };
        if let Some(n) = number(&lookup, "HOOKLINE_MAX_BODY_BYTES")? {
            s.max_body_bytes = n as usize;
        }
        if let Some(h) = number(&lookup, "HOOKLINE_DELIVERY_TTL_HOURS")? {
            s.delivery_ttl = Duration::from_secs(h * 3600);
        }
        if let Some(secs) = number(&lookup, "HOOKLINE_PROCESS_LEASE_SECS")? {
            s.process_lease = Duration::from_secs(secs);
        }
        if let Some(raw) = present(lookup("HOOKLINE_PAYLOAD_RETENTION")) {
            s.payload_retention = crate::outbound::settings::parse_duration(&raw)
                .filter(|d| !d.is_zero())
                .ok_or(ConfigError {
                    name: "HOOKLINE_PAYLOAD_RETENTION",
                    expected: "a duration such as 7d, 36h or 90m",
                    value: raw,
                })?;
        }
        Ok(s)
    }
}
