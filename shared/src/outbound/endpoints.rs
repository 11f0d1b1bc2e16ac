//! Endpoints (seeds 002 and 003): an org registers a URL and the event types it wants, and
//! gets a `whsec_…` secret to verify what Hookline sends. The URL is checked against the
//! SSRF rules at registration (and again at every send); the secret is sealed by the key
//! service and only ever shown to the org's managers.

use super::catalog::EventCatalog;
use super::model::{Endpoint, EndpointId, DEFAULT_SIGNATURE_HEADER};
use super::publish::Publisher;
use super::settings::OutboundSettings;
use super::signing;
use super::ssrf::AddressPolicy;
use super::Error;
use crate::clock::Clock;
use crate::connections::StoredSecret;
use crate::ports::keys::{EncryptionContext, KeyService, Sealed};
use crate::ports::outbound::OutboundStore;
use crate::secret::Secret;
use serde::Deserialize;
use std::sync::Arc;

/// What `POST /api/v1/endpoints` takes.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// `https`, and not (nor resolving to) a private, loopback, link-local or metadata
    /// address.
    #[schema(format = "uri", example = "https://receiver.example.com/hookline")]
    pub url: String,
    /// Types from `GET /api/v1/event-types`; `prefix.*` subscribes to a family.
    #[schema(min_items = 1, example = json!(["invoice.paid", "incident.*"]))]
    pub event_types: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub signature_header: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub rate_limit_per_second: Option<u32>,
}

/// What `PATCH /api/v1/endpoints/{id}` may change; `null` clears `description` and
/// `rate_limit_per_second`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    pub signature_header: Option<String>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit_per_second: Option<Option<u32>>,
}

/// A field that was present (`Some(None)` for an explicit `null`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Headers Hookline sets itself, which a signature may not be put in.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "connection",
    "transfer-encoding",
];

const MAX_EVENT_TYPES: usize = 100;
const MAX_DESCRIPTION: usize = 500;
const MAX_RATE: u32 = 10_000;

/// What an endpoint secret is sealed under: whose it is and what it is for (the KMS key
/// policy lets only the outbound functions use this purpose).
pub fn secret_context(org_id: &str, endpoint: &EndpointId) -> EncryptionContext {
    EncryptionContext::new([
        ("org", org_id),
        ("endpoint", endpoint.as_str()),
        ("purpose", "endpoint_secret"),
    ])
}

pub struct Endpoints {
    store: Arc<dyn OutboundStore>,
    keys: Arc<dyn KeyService>,
    policy: Arc<AddressPolicy>,
    catalog: Arc<EventCatalog>,
    publisher: Arc<Publisher>,
    clock: Arc<dyn Clock>,
    settings: OutboundSettings,
    /// The plan's limit on endpoints (`None`: nothing is limited).
    plans: Option<Arc<dyn crate::billing::plan::PlanGate>>,
}

impl Endpoints {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn OutboundStore>,
        keys: Arc<dyn KeyService>,
        policy: Arc<AddressPolicy>,
        catalog: Arc<EventCatalog>,
        publisher: Arc<Publisher>,
        clock: Arc<dyn Clock>,
        settings: OutboundSettings,
        plans: Option<Arc<dyn crate::billing::plan::PlanGate>>,
    ) -> Self {
        Self {
            store,
            keys,
            policy,
            catalog,
            publisher,
            clock,
            settings,
            plans,
        }
    }

    pub fn catalog(&self) -> &EventCatalog {
        &self.catalog
    }

    /// Register an endpoint; its secret is answered once here (and by `secret`). A new
    /// enabled endpoint is sent a `webhook.test` event (seed 003), whose outcome shows in its
    /// deliveries.
    pub async fn create(
        &self,
        org_id: &str,
        req: CreateEndpoint,
    ) -> Result<(Endpoint, Secret), Error> {
        // The cheap checks first: the URL's costs a DNS lookup.
        let event_types = self.check_event_types(&req.event_types)?;
        let url = self.check_url(&req.url).await?;
        let signature_header = check_header(
            req.signature_header
                .as_deref()
                .unwrap_or(DEFAULT_SIGNATURE_HEADER),
        )?;
        let description = check_description(req.description)?;
        let rate = check_rate(req.rate_limit_per_second)?;
        if let Some(plans) = &self.plans {
            use crate::billing::plan::{check_limit, Limited};
            let limit = plans.limit(org_id, Limited::Endpoints).await?;
            if limit.is_some() {
                let have = self.store.count_endpoints(org_id).await?;
                check_limit(have, Limited::Endpoints, limit)?;
            }
        }
        let id = EndpointId::generate();
        let secret = signing::generate_secret();
        let sealed = self.seal(org_id, &id, &secret).await?;
        let now = self.clock.now();
        let endpoint = Endpoint {
            id,
            org_id: org_id.to_owned(),
            url,
            description,
            event_types,
            signature_header,
            enabled: req.enabled.unwrap_or(true),
            disabled_reason: None,
            rate_limit_per_second: rate,
            secret: StoredSecret {
                sealed,
                valid_until: None,
            },
            previous_secret: None,
            failing_since: None,
            created_at: now,
            updated_at: now,
        };
        self.store.create_endpoint(&endpoint).await?;
        if endpoint.enabled {
            if let Err(e) = self.publisher.send_test(&endpoint).await {
                // The endpoint exists; the user can send a test again.
                tracing::warn!(endpoint = %endpoint.id, error = %e, "could not queue the test event of a new endpoint");
            }
        }
        Ok((endpoint, secret))
    }

    pub async fn get(&self, org_id: &str, id: &EndpointId) -> Result<Endpoint, Error> {
        self.store
            .get_endpoint(org_id, id)
            .await?
            .ok_or(Error::NotFound)
    }

    pub async fn list(
        &self,
        org_id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> Result<(Vec<Endpoint>, Option<String>), Error> {
        Ok(self.store.list_endpoints(org_id, limit, cursor).await?)
    }

    pub async fn update(
        &self,
        org_id: &str,
        id: &EndpointId,
        patch: EndpointPatch,
    ) -> Result<Endpoint, Error> {
        let mut e = self.get(org_id, id).await?;
        if let Some(url) = patch.url {
            e.url = self.check_url(&url).await?;
        }
        if let Some(types) = patch.event_types {
            e.event_types = self.check_event_types(&types)?;
        }
        if let Some(description) = patch.description {
            e.description = check_description(description)?;
        }
        if let Some(header) = patch.signature_header {
            e.signature_header = check_header(&header)?;
        }
        if let Some(rate) = patch.rate_limit_per_second {
            e.rate_limit_per_second = check_rate(rate)?;
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !e.enabled {
                // Brought back by a person: failures start counting afresh.
                e.disabled_reason = None;
                e.failing_since = None;
            }
            e.enabled = enabled;
        }
        e.updated_at = self.clock.now();
        self.store.update_endpoint(&e).await?;
        Ok(e)
    }

    pub async fn delete(&self, org_id: &str, id: &EndpointId) -> Result<(), Error> {
        if self.store.delete_endpoint(org_id, id).await? {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// The endpoint's current secret.
    pub async fn secret(&self, org_id: &str, id: &EndpointId) -> Result<Secret, Error> {
        let e = self.get(org_id, id).await?;
        self.open(&e, &e.secret).await
    }

    /// A new secret; the previous one keeps signing beside it for `OUTBOUND_SECRET_OVERLAP`.
    pub async fn rotate(&self, org_id: &str, id: &EndpointId) -> Result<(Endpoint, Secret), Error> {
        let mut e = self.get(org_id, id).await?;
        let secret = signing::generate_secret();
        let sealed = self.seal(org_id, id, &secret).await?;
        let now = self.clock.now();
        let overlap = chrono::Duration::from_std(self.settings.secret_overlap)
            .unwrap_or(chrono::Duration::hours(24));
        e.previous_secret = Some(StoredSecret {
            sealed: e.secret.sealed.clone(),
            valid_until: Some(now + overlap),
        });
        e.secret = StoredSecret {
            sealed,
            valid_until: None,
        };
        e.updated_at = now;
        self.store.update_endpoint(&e).await?;
        Ok((e, secret))
    }

    /// Send a `webhook.test` event to the endpoint now.
    pub async fn test(
        &self,
        org_id: &str,
        id: &EndpointId,
    ) -> Result<super::model::Delivery, Error> {
        let e = self.get(org_id, id).await?;
        self.publisher.send_test(&e).await
    }

    async fn check_url(&self, raw: &str) -> Result<String, Error> {
        let url = self
            .policy
            .check_url(raw.trim())
            .map_err(|e| Error::Invalid(format!("url: {e}")))?;
        match self.policy.resolve(&url).await {
            Ok(_) => {}
            Err(e) if e.by_policy() => return Err(Error::Invalid(format!("url: {e}"))),
            // A name that does not resolve (yet) is taken: its DNS may be set up later, and
            // every send checks it again. The test event's failure shows it meanwhile.
            Err(e) => tracing::info!(
                reason = e.reason(),
                "an endpoint's host does not resolve yet"
            ),
        }
        Ok(url.to_string())
    }

    fn check_event_types(&self, types: &[String]) -> Result<Vec<String>, Error> {
        if types.is_empty() {
            return Err(Error::Invalid(
                "event_types: name at least one event type (or \"*\" for all)".into(),
            ));
        }
        if types.len() > MAX_EVENT_TYPES {
            return Err(Error::Invalid(format!(
                "event_types: at most {MAX_EVENT_TYPES} entries"
            )));
        }
        let mut out: Vec<String> = Vec::with_capacity(types.len());
        for t in types {
            let t = t.trim();
            self.catalog
                .check_subscription(t)
                .map_err(|e| Error::Invalid(format!("event_types: {e}")))?;
            if !out.iter().any(|o| o == t) {
                out.push(t.to_owned());
            }
        }
        Ok(out)
    }

    async fn seal(&self, org_id: &str, id: &EndpointId, secret: &Secret) -> Result<String, Error> {
        let sealed = self.keys.seal(secret, &secret_context(org_id, id)).await?;
        serde_json::to_string(&sealed)
            .map_err(|e| Error::Unavailable(format!("cannot store a sealed secret: {e}")))
    }

    async fn open(&self, e: &Endpoint, stored: &StoredSecret) -> Result<Secret, Error> {
        open_secret(self.keys.as_ref(), e, stored).await
    }
}

/// Open one of an endpoint's stored secrets.
pub async fn open_secret(
    keys: &dyn KeyService,
    e: &Endpoint,
    stored: &StoredSecret,
) -> Result<Secret, Error> {
    let sealed: Sealed = serde_json::from_str(&stored.sealed)
        .map_err(|_| Error::Unavailable(format!("the stored secret of {} is unreadable", e.id)))?;
    Ok(keys
        .open(&sealed, &secret_context(&e.org_id, &e.id))
        .await?)
}

fn check_header(raw: &str) -> Result<String, Error> {
    let name = raw.trim();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
        return Err(Error::Invalid(format!(
            "signature_header: {name:?} is not a valid HTTP header name"
        )));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(Error::Invalid(format!(
            "signature_header: {name} is set by Hookline itself; choose another name, such as X-Signature"
        )));
    }
    Ok(name.to_owned())
}

fn check_description(d: Option<String>) -> Result<Option<String>, Error> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(Error::Invalid(format!(
            "description: at most {MAX_DESCRIPTION} characters"
        ))),
        Some(d) if d.trim().is_empty() => Ok(None),
        other => Ok(other),
    }
}

fn check_rate(r: Option<u32>) -> Result<Option<u32>, Error> {
    match r {
        Some(r) if r == 0 || r > MAX_RATE => Err(Error::Invalid(format!(
            "rate_limit_per_second: a whole number from 1 to {MAX_RATE}, or null for no limit"
        ))),
        other => Ok(other),
    }
}
