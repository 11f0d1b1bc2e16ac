//! The tiers (`free`, `team`, `enterprise`) and what each one gives: its features and its
//! limits. The defaults live in [`TierTable::default`] (the README quotes them); a deployment
//! overrides any part of them with `HOOKLINE_TIERS` (JSON) or `HOOKLINE_TIERS_FILE`.

use serde::{Deserialize, Deserializer, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A plan an org runs on.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Free,
    Team,
    Enterprise,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Team, Tier::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Team => "team",
            Tier::Enterprise => "enterprise",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?} (known: free, team, enterprise)")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim())
            .ok_or_else(|| UnknownTier(s.to_owned()))
    }
}

/// How much of each thing a tier may have; `None` (JSON `null`) is unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Limits {
    /// Connected repositories.
    pub repositories: Option<u64>,
    /// Outbound endpoints.
    pub endpoints: Option<u64>,
    /// Events published into the org's outbound stream per calendar month.
    pub events_per_month: Option<u64>,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        repositories: None,
        endpoints: None,
        events_per_month: None,
    };
}

/// What one tier gives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub features: Vec<String>,
    pub limits: Limits,
}

impl Plan {
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// The features every tier has; each tier above adds its own.
pub const FREE_FEATURES: [&str; 3] = [
    "inbound_webhooks",
    "repository_connections",
    "outbound_webhooks",
];
/// What `team` adds to `free`.
pub const TEAM_FEATURES: [&str; 3] = ["event_replay", "delivery_log_api", "email_alerts"];
/// What `enterprise` adds to `team`.
pub const ENTERPRISE_FEATURES: [&str; 4] =
    ["sso", "audit_log", "priority_support", "offline_licence"];

/// The default limits (the README's tier table quotes these).
pub const FREE_LIMITS: Limits = Limits {
    repositories: Some(3),
    endpoints: Some(2),
    events_per_month: Some(10_000),
};
pub const TEAM_LIMITS: Limits = Limits {
    repositories: Some(50),
    endpoints: Some(25),
    events_per_month: Some(1_000_000),
};
pub const ENTERPRISE_LIMITS: Limits = Limits::UNLIMITED;

/// Features and limits of every tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierTable {
    pub free: Plan,
    pub team: Plan,
    pub enterprise: Plan,
}

impl Default for TierTable {
    fn default() -> Self {
        let features = |sets: &[&[&str]]| -> Vec<String> {
            sets.iter()
                .flat_map(|s| s.iter().map(|f| (*f).to_owned()))
                .collect()
        };
        Self {
            free: Plan {
                features: features(&[&FREE_FEATURES]),
                limits: FREE_LIMITS,
            },
            team: Plan {
                features: features(&[&FREE_FEATURES, &TEAM_FEATURES]),
                limits: TEAM_LIMITS,
            },
            enterprise: Plan {
                features: features(&[&FREE_FEATURES, &TEAM_FEATURES, &ENTERPRISE_FEATURES]),
                limits: ENTERPRISE_LIMITS,
            },
        }
    }
}

/// Why the tier table configuration was refused; names the variable and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct TierConfigError {
    pub variable: &'static str,
    pub problem: String,
}

/// An override of one tier: absent fields keep their default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanOverride {
    features: Option<Vec<String>>,
    #[serde(default)]
    limits: LimitsOverride,
}

/// Absent keeps the default, `null` makes the limit unlimited.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsOverride {
    #[serde(default, deserialize_with = "present")]
    repositories: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    endpoints: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    events_per_month: Option<Option<u64>>,
}

/// A field that is present, null or not, is `Some` (serde alone folds null into absent).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    Option::<u64>::deserialize(d).map(Some)
}

impl TierTable {
    /// What `tier` gives.
    pub fn plan(&self, tier: Tier) -> &Plan {
        match tier {
            Tier::Free => &self.free,
            Tier::Team => &self.team,
            Tier::Enterprise => &self.enterprise,
        }
    }

    fn plan_mut(&mut self, tier: Tier) -> &mut Plan {
        match tier {
            Tier::Free => &mut self.free,
            Tier::Team => &mut self.team,
            Tier::Enterprise => &mut self.enterprise,
        }
    }

    /// The table from the process environment (see [`TierTable::from_lookup`]).
    pub fn from_env() -> Result<Self, TierConfigError> {
        Self::from_lookup(crate::config::var)
    }

    /// The defaults, overridden by `HOOKLINE_TIERS` (JSON such as
    /// `{"team": {"limits": {"endpoints": 50}}}`: any subset of tiers, any subset of fields,
    /// `null` for unlimited) or by the JSON in the file `HOOKLINE_TIERS_FILE` names.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, TierConfigError> {
        let lookup = |name: &str| crate::config::present(lookup(name));
        let (variable, text) = match (lookup("HOOKLINE_TIERS"), lookup("HOOKLINE_TIERS_FILE")) {
            (None, None) => return Ok(Self::default()),
            (Some(_), Some(_)) => {
                return Err(TierConfigError {
                    variable: "HOOKLINE_TIERS",
                    problem: "set it or HOOKLINE_TIERS_FILE, not both".into(),
                })
            }
            (Some(json), None) => ("HOOKLINE_TIERS", json),
            (None, Some(path)) => {
                let path = path.trim().to_owned();
                let text = std::fs::read_to_string(&path).map_err(|e| TierConfigError {
                    variable: "HOOKLINE_TIERS_FILE",
                    problem: format!("cannot read {path}: {e}"),
                })?;
                ("HOOKLINE_TIERS_FILE", text)
            }
        };
        Self::default()
            .overridden_by(&text)
            .map_err(|problem| TierConfigError { variable, problem })
    }

    /// This table with the JSON override `text` applied, or what is wrong with it.
    fn overridden_by(mut self, text: &str) -> Result<Self, String> {
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a JSON object of tiers ({e}); expected e.g. {{\"team\": {{\"limits\": {{\"endpoints\": 50}}}}}}"
            )
        })?;
        for (name, value) in raw {
            let tier: Tier = name.parse().map_err(|e: UnknownTier| e.to_string())?;
            let over: PlanOverride = serde_json::from_value(value).map_err(|e| {
                format!(
                    "tier {tier}: {e} (fields: features, a list of names; limits, with \
                     repositories, endpoints and events_per_month, each a whole number or null \
                     for unlimited)"
                )
            })?;
            let plan = self.plan_mut(tier);
            if let Some(features) = over.features {
                plan.features = features;
            }
            let limits = over.limits;
            if let Some(v) = limits.repositories {
                plan.limits.repositories = v;
            }
            if let Some(v) = limits.endpoints {
                plan.limits.endpoints = v;
            }
            if let Some(v) = limits.events_per_month {
                plan.limits.events_per_month = v;
            }
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn table(vars: &[(&str, &str)]) -> Result<TierTable, TierConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TierTable::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn tiers_read_and_print_in_lowercase() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>(), Ok(tier));
            assert_eq!(
                serde_json::to_value(tier).unwrap(),
                serde_json::json!(tier.as_str())
            );
        }
        let err = "gold".parse::<Tier>().unwrap_err().to_string();
        assert_eq!(err, "unknown tier \"gold\" (known: free, team, enterprise)");
        assert!(serde_json::from_str::<Tier>("\"Team\"").is_err());
    }

    #[test]
    fn the_defaults_grow_with_the_tier_and_enterprise_is_unlimited() {
        let t = TierTable::default();
        assert_eq!(t.free.limits, FREE_LIMITS);
        assert_eq!(t.free.limits.repositories, Some(3));
        assert_eq!(t.free.limits.endpoints, Some(2));
        assert_eq!(t.free.limits.events_per_month, Some(10_000));
        assert_eq!(t.team.limits.events_per_month, Some(1_000_000));
        assert_eq!(t.enterprise.limits, Limits::UNLIMITED);
        // Each tier has everything the one below has.
        for f in &t.free.features {
            assert!(t.team.has_feature(f), "{f}");
        }
        for f in &t.team.features {
            assert!(t.enterprise.has_feature(f), "{f}");
        }
        assert!(t.team.has_feature("event_replay"));
        assert!(!t.free.has_feature("event_replay"));
        assert!(t.enterprise.has_feature("offline_licence"));
        // Unlimited is JSON null, not an absent field.
        assert_eq!(
            serde_json::to_value(&t.enterprise.limits).unwrap(),
            serde_json::json!({"repositories": null, "endpoints": null, "events_per_month": null})
        );
    }

    #[test]
    fn an_override_changes_only_what_it_names() {
        let t = table(&[(
            "HOOKLINE_TIERS",
            r#"{"team": {"limits": {"endpoints": 40, "events_per_month": null}},
                "free": {"features": ["inbound_webhooks"]}}"#,
        )])
        .unwrap();
        let d = TierTable::default();
        assert_eq!(t.team.limits.endpoints, Some(40));
        assert_eq!(t.team.limits.events_per_month, None, "null is unlimited");
        assert_eq!(t.team.limits.repositories, d.team.limits.repositories);
        assert_eq!(t.team.features, d.team.features);
        assert_eq!(t.free.features, vec!["inbound_webhooks".to_string()]);
        assert_eq!(t.free.limits, d.free.limits);
        assert_eq!(t.enterprise, d.enterprise);
        assert_eq!(table(&[]).unwrap(), d);
        assert_eq!(table(&[("HOOKLINE_TIERS", "  ")]).unwrap(), d);
    }

    #[test]
    fn the_override_may_come_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiers.json");
        std::fs::write(
            &path,
            r#"{"enterprise": {"limits": {"repositories": 1000}}}"#,
        )
        .unwrap();
        let t = table(&[("HOOKLINE_TIERS_FILE", path.to_str().unwrap())]).unwrap();
        assert_eq!(t.enterprise.limits.repositories, Some(1000));
        let err = table(&[("HOOKLINE_TIERS_FILE", "/nonexistent/tiers.json")]).unwrap_err();
        assert_eq!(err.variable, "HOOKLINE_TIERS_FILE");
        assert!(err.to_string().contains("/nonexistent/tiers.json"), "{err}");
    }

    #[test]
    fn a_bad_override_is_an_error_naming_the_variable_and_the_problem() {
        for (json, says) in [
            ("{", "not a JSON object"),
            ("[1]", "not a JSON object"),
            (r#"{"gold": {}}"#, "unknown tier \"gold\""),
            (r#"{"team": {"limit": {}}}"#, "unknown field `limit`"),
            (
                r#"{"team": {"limits": {"seats": 3}}}"#,
                "unknown field `seats`",
            ),
            (r#"{"team": {"limits": {"endpoints": -1}}}"#, "tier team"),
            (
                r#"{"team": {"limits": {"endpoints": "many"}}}"#,
                "tier team",
            ),
        ] {
            let err = table(&[("HOOKLINE_TIERS", json)]).unwrap_err();
            assert_eq!(err.variable, "HOOKLINE_TIERS", "{json}");
            let text = err.to_string();
            assert!(text.starts_with("HOOKLINE_TIERS: "), "{text}");
            assert!(text.contains(says), "{json}: {text}");
        }
        let err = table(&[("HOOKLINE_TIERS", "{}"), ("HOOKLINE_TIERS_FILE", "/x")]).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
    }
}
