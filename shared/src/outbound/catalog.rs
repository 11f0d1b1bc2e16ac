//! The event types an endpoint may subscribe to and a publisher may publish: seed 002's and
//! seed 003's lists, Hookline's own, a deployment's additions (`HOOKLINE_EVENT_TYPES`, or a
//! file in `HOOKLINE_EVENT_TYPES_FILE`), and the relayed provider events (`github.*`, …).

use super::model::{valid_event_type, Subscription};
use crate::model::Source;
use serde::Serialize;

/// Where a type comes from, as `GET /api/v1/event-types` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Seed 002's and 003's product events.
    Default,
    /// Events Hookline publishes itself.
    Hookline,
    /// Added by this deployment.
    Custom,
    /// Relayed provider events: `{source}.{event}`, one wildcard per source.
    Relay,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventTypeInfo {
    pub name: String,
    pub description: String,
    pub origin: Origin,
}

/// The event `POST /endpoints/{id}/test` and a new endpoint receive.
pub const TEST_EVENT: &str = "webhook.test";

const DEFAULTS: &[(&str, &str)] = &[
    ("lead_won", "A lead was won"),
    ("lead_lost", "A lead was lost"),
    ("proposal_accepted", "A proposal was accepted"),
    ("meeting.booked", "A meeting was booked"),
    ("invoice.paid", "An invoice was paid"),
    ("payment_failed", "A payment failed"),
    ("project.completed", "A project was completed"),
    ("task.completed", "A task was completed"),
    ("client.created", "A client was created"),
    ("billing.suspended", "Billing was suspended"),
    ("survey.submitted", "A survey was submitted"),
    (
        "developer.added",
        "A new developer was added to the organization",
    ),
    (
        "developer.removed",
        "A developer was removed from the organization",
    ),
    ("repository.connected", "A new repository was connected"),
    ("repository.disconnected", "A repository was disconnected"),
    (
        "analysis.complete",
        "Repository analysis has been completed",
    ),
    ("metrics.updated", "Developer metrics have been updated"),
];

const HOOKLINE: &[(&str, &str)] = &[
    (
        "incident.created",
        "A workflow run or pipeline of a connected repository failed",
    ),
    (
        "incident.resolved",
        "A later run of the same workflow on the same branch succeeded",
    ),
    (TEST_EVENT, "A test delivery to check an endpoint works"),
];

/// The subscribable (and publishable) event types of this deployment.
#[derive(Debug, Clone)]
pub struct EventCatalog {
    types: Vec<EventTypeInfo>,
}

impl Default for EventCatalog {
    fn default() -> Self {
        let mut types: Vec<EventTypeInfo> = DEFAULTS
            .iter()
            .map(|(n, d)| info(n, d, Origin::Default))
            .chain(HOOKLINE.iter().map(|(n, d)| info(n, d, Origin::Hookline)))
            .collect();
        types.extend(Source::ALL.iter().map(|s| {
            info(
                &format!("{}.*", s.as_str()),
                &format!(
                    "Every verified {} delivery of your connected repositories or accounts, relayed",
                    s.as_str()
                ),
                Origin::Relay,
            )
        }));
        Self { types }
    }
}

fn info(name: &str, description: &str, origin: Origin) -> EventTypeInfo {
    EventTypeInfo {
        name: name.to_owned(),
        description: description.to_owned(),
        origin,
    }
}

impl EventCatalog {
    /// The defaults plus `HOOKLINE_EVENT_TYPES` (comma-separated `name` or `name=description`)
    /// and the lines of `HOOKLINE_EVENT_TYPES_FILE` (`name description…`, `#` comments).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut catalog = Self::default();
        if let Some(list) = lookup("HOOKLINE_EVENT_TYPES") {
            for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let (name, description) = entry.split_once('=').unwrap_or((entry, ""));
                catalog
                    .add(name.trim(), description.trim())
                    .map_err(|e| format!("HOOKLINE_EVENT_TYPES: {e}"))?;
            }
        }
        if let Some(path) = lookup("HOOKLINE_EVENT_TYPES_FILE") {
            let text = std::fs::read_to_string(path.trim())
                .map_err(|e| format!("HOOKLINE_EVENT_TYPES_FILE {path}: {e}"))?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, description) =
                    line.split_once(char::is_whitespace).unwrap_or((line, ""));
                catalog
                    .add(name, description.trim())
                    .map_err(|e| format!("HOOKLINE_EVENT_TYPES_FILE line {}: {e}", n + 1))?;
            }
        }
        Ok(catalog)
    }

    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(crate::config::var)
    }

    fn add(&mut self, name: &str, description: &str) -> Result<(), String> {
        if !valid_event_type(name) {
            return Err(format!(
                "{name:?} is not a valid event type (lowercase letters, digits, _ - and dots)"
            ));
        }
        if relay_source(name).is_some() {
            return Err(format!("{name:?} is reserved for relayed provider events"));
        }
        if !self.types.iter().any(|t| t.name == name) {
            self.types.push(info(name, description, Origin::Custom));
        }
        Ok(())
    }

    pub fn types(&self) -> &[EventTypeInfo] {
        &self.types
    }

    fn known(&self, name: &str) -> bool {
        self.types
            .iter()
            .any(|t| t.origin != Origin::Relay && t.name == name)
    }

    /// Check one entry of an endpoint's `event_types`: a known type, a relayed provider event
    /// (`github.workflow_run`), or a wildcard that matches at least one of those.
    pub fn check_subscription(&self, raw: &str) -> Result<(), String> {
        let sub = Subscription::parse(raw)?;
        let ok = match &sub {
            Subscription::All => true,
            Subscription::Exact(name) => self.known(name) || relay_source(name).is_some(),
            Subscription::Prefix(prefix) => {
                Source::ALL
                    .iter()
                    .any(|s| format!("{}.", s.as_str()).starts_with(prefix.as_str()))
                    || self
                        .types
                        .iter()
                        .any(|t| t.origin != Origin::Relay && t.name.starts_with(prefix.as_str()))
            }
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "{raw:?} is not an event type of this deployment (GET /api/v1/event-types lists them)"
            ))
        }
    }

    /// Check a type a publisher sends: known, and not one only Hookline publishes.
    pub fn check_publishable(&self, name: &str) -> Result<(), String> {
        if relay_source(name).is_some() {
            return Err(format!(
                "{name:?} is a relayed provider event: only Hookline publishes those"
            ));
        }
        if name == TEST_EVENT {
            return Err(format!(
                "{TEST_EVENT} is sent with POST /api/v1/endpoints/{{id}}/test"
            ));
        }
        if self.known(name) {
            Ok(())
        } else {
            Err(format!(
                "unknown event type {name:?} (GET /api/v1/event-types lists them; a deployment adds its own with HOOKLINE_EVENT_TYPES)"
            ))
        }
    }
}

/// The provider a relayed type (`github.workflow_run`) comes from.
pub fn relay_source(name: &str) -> Option<Source> {
    let (prefix, rest) = name.split_once('.')?;
    if rest.is_empty() {
        return None;
    }
    Source::ALL.iter().copied().find(|s| s.as_str() == prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_holds_both_seeds_hooklines_own_and_the_relays() {
        let c = EventCatalog::default();
        for name in [
            "lead_won",
            "survey.submitted",
            "developer.added",
            "metrics.updated",
            "incident.created",
            "incident.resolved",
            "webhook.test",
            "github.*",
            "whatsapp.*",
        ] {
            assert!(c.types().iter().any(|t| t.name == name), "{name}");
        }
    }

    #[test]
    fn subscriptions_name_known_types_relays_or_wildcards_over_them() {
        let c = EventCatalog::default();
        for ok in [
            "invoice.paid",
            "github.workflow_run",
            "github.*",
            "incident.*",
            "*",
            "lead_won",
        ] {
            assert!(c.check_subscription(ok).is_ok(), "{ok}");
        }
        for bad in ["invoice.refunded", "nothing.*", "Invoice.Paid", ""] {
            assert!(c.check_subscription(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn publishers_may_not_forge_relays_or_test_events() {
        let c = EventCatalog::default();
        assert!(c.check_publishable("invoice.paid").is_ok());
        assert!(c.check_publishable("github.push").is_err());
        assert!(c.check_publishable("webhook.test").is_err());
        assert!(c.check_publishable("made.up").is_err());
    }

    #[test]
    fn a_deployment_adds_its_own_types_from_the_environment_and_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("types.txt");
        std::fs::write(
            &file,
            "# ours\norder.shipped An order left the warehouse\n\n",
        )
        .unwrap();
        let file = file.display().to_string();
        let c = EventCatalog::from_lookup(|n| match n {
            "HOOKLINE_EVENT_TYPES" => Some("deal.closed=A deal closed, quote.sent".into()),
            "HOOKLINE_EVENT_TYPES_FILE" => Some(file.clone()),
            _ => None,
        })
        .unwrap();
        for name in ["deal.closed", "quote.sent", "order.shipped"] {
            assert!(c.check_publishable(name).is_ok(), "{name}");
        }
        let err = EventCatalog::from_lookup(|n| {
            (n == "HOOKLINE_EVENT_TYPES").then(|| "github.fake".to_string())
        })
        .unwrap_err();
        assert!(err.contains("reserved"), "{err}");
    }
}
