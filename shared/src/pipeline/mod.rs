//! The one inbound pipeline every provider goes through (DESIGN.md §1.1, steps 1–5):
//! bound the body, verify, describe, record idempotently, enqueue, answer 202.

use crate::clock::Clock;
use crate::config::Settings;
use crate::http::{json, problem, text, Request, Response};
use crate::model::{
    sha256_hex, DeliveryKey, DeliveryStatus, Envelope, NewDelivery, Owner, Source, StoredPayload,
};
use crate::ports::intake::{AtomicIntake, IntakeMessage};
use crate::ports::queue::Queue;
use crate::ports::store::{DeliveryStore, RecordOutcome};
use crate::providers::{
    provider, Handshake, Inbound, ParseError, ProviderSecrets, RepositoryRef, VerifyContext,
    VerifyError,
};
use crate::telemetry::{self, InboundOutcome};
use chrono::{DateTime, Utc};
use http::{HeaderValue, Method, StatusCode};
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the pipeline refused or could not take a delivery. Each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("signature verification failed: {0}")]
    Unauthorized(#[from] VerifyError),
    #[error("handshake refused")]
    HandshakeRefused,
    #[error("malformed payload: {0}")]
    Malformed(#[from] ParseError),
    #[error("delivery {0} was already received with a different payload")]
    PayloadMismatch(String),
    #[error("delivery {0} is being accepted by another request")]
    InProgress(String),
    #[error("{0}")]
    Unavailable(String),
}

impl InboundError {
    pub fn status(&self) -> StatusCode {
        match self {
            InboundError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            InboundError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            InboundError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            InboundError::HandshakeRefused => StatusCode::FORBIDDEN,
            InboundError::Malformed(_) => StatusCode::BAD_REQUEST,
            InboundError::PayloadMismatch(_) => StatusCode::CONFLICT,
            InboundError::InProgress(_) | InboundError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            InboundError::MethodNotAllowed => "method_not_allowed",
            InboundError::TooLarge { .. } => "payload_too_large",
            InboundError::Unauthorized(_) => "invalid_signature",
            InboundError::HandshakeRefused => "verification_failed",
            InboundError::Malformed(_) => "malformed_payload",
            InboundError::PayloadMismatch(_) => "delivery_conflict",
            InboundError::InProgress(_) => "delivery_in_progress",
            InboundError::Unavailable(_) => "unavailable",
        }
    }

    /// The answer the caller sees: what to fix, never a secret or an internal detail.
    pub fn into_response(self) -> Response {
        let message = match &self {
            InboundError::Unavailable(_) => {
                "Hookline cannot take deliveries right now; retry later".to_string()
            }
            other => other.to_string(),
        };
        let mut res = problem(self.status(), self.code(), message);
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            res.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        res
    }
}

/// What a 2xx answer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// `queued` or `skipped` (202), or `duplicate` (200).
    pub status: &'static str,
    pub source: Source,
    pub delivery_id: String,
}

/// The inbound pipeline over its ports. Cheap to share: build it once per cold start.
#[derive(Clone)]
pub struct Pipeline {
    store: Arc<dyn DeliveryStore>,
    queue: Arc<dyn Queue>,
    secrets: Arc<ProviderSecrets>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    connections: Option<Arc<dyn ConnectionSecrets>>,
    /// Records and queues a new delivery in one step, where the store and queue allow it.
    intake: Option<Arc<dyn AtomicIntake>>,
}

/// A connected repository a delivery may belong to, with every secret that may have signed
/// it right now (the current one, and a rotated-out one inside its overlap window).
pub struct Candidate {
    pub enabled: bool,
    pub secrets: Vec<crate::secret::Secret>,
    /// The connection's org: a delivery its secrets verify goes in that org's log.
    pub owner: Owner,
}

/// Finds the connections of the repository a GitHub or GitLab delivery names, so it is
/// verified with that repository's own secret (DESIGN.md §1.2).
#[async_trait::async_trait]
pub trait ConnectionSecrets: Send + Sync + 'static {
    /// Empty when the delivery names no connected repository (the global secret applies).
    async fn candidates(
        &self,
        source: Source,
        repository: &RepositoryRef,
    ) -> Result<Vec<Candidate>, String>;
}

/// A verified, described delivery ready to record.
struct Arrival {
    source: Source,
    key: DeliveryKey,
    delivery_id: String,
    event_type: String,
    payload_sha256: String,
    signature_verified: bool,
    received_at: DateTime<Utc>,
    owner: Option<Owner>,
    /// The body and headers (redacted) as kept for the log API and replays.
    payload: StoredPayload,
}

fn lease(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        queue: Arc<dyn Queue>,
        secrets: Arc<ProviderSecrets>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            store,
            queue,
            secrets,
            clock,
            settings,
            connections: None,
            intake: None,
        }
    }

    /// The same pipeline, verifying connected repositories with their own secrets.
    pub fn with_connections(&self, connections: Arc<dyn ConnectionSecrets>) -> Self {
        Self {
            connections: Some(connections),
            ..self.clone()
        }
    }

    /// The same pipeline, recording and queueing each new delivery in one step through
    /// `intake` (which must write to this pipeline's store and queue).
    pub fn with_atomic_intake(&self, intake: Arc<dyn AtomicIntake>) -> Self {
        Self {
            intake: Some(intake),
            ..self.clone()
        }
    }

    /// Verify with the connection's secrets when the delivery names a connected repository,
    /// else with the global provider secret. With a connection: whether it is enabled, and
    /// its owner.
    async fn verify(
        &self,
        source: Source,
        req: &Inbound,
        repository: Option<&RepositoryRef>,
        ctx: &VerifyContext,
    ) -> Result<(crate::providers::Verified, Option<(bool, Owner)>), InboundError> {
        let provider = provider(source);
        let candidates = match (&self.connections, repository) {
            (Some(c), Some(repository)) if matches!(source, Source::Github | Source::Gitlab) => c
                .candidates(source, repository)
                .await
                .map_err(InboundError::Unavailable)?,
            _ => Vec::new(),
        };
        if candidates.is_empty() {
            return Ok((provider.verify(req, &self.secrets, ctx)?, None));
        }
        let mut last = VerifyError::Mismatch;
        for candidate in &candidates {
            for secret in &candidate.secrets {
                let mut secrets = (*self.secrets).clone();
                match source {
                    Source::Github => secrets.github_webhook_secret = Some(secret.clone()),
                    _ => secrets.gitlab_webhook_token = Some(secret.clone()),
                }
                match provider.verify(req, &secrets, ctx) {
                    Ok(v) => return Ok((v, Some((candidate.enabled, candidate.owner.clone())))),
                    Err(e) => last = e,
                }
            }
        }
        Err(InboundError::Unauthorized(last))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Handle one request to `source`'s route. Logs one line with the outcome and counts it.
    pub async fn handle(&self, source: Source, req: Request) -> Response {
        let started = Instant::now();
        let inbound = to_inbound(req);
        let result = self.accept(source, &inbound).await;
        let took = started.elapsed();
        if let Some(outcome) = delivery_outcome(&result) {
            telemetry::inbound(source, outcome, took);
        }
        let latency_ms = took.as_secs_f64() * 1000.0;
        match result {
            Ok(Answer::Delivery(accepted)) => {
                tracing::info!(
                    source = %source, delivery_id = %accepted.delivery_id,
                    outcome = accepted.status, latency_ms, "delivery accepted"
                );
                // Taken (queued, or skipped for a disabled connection): 202; a duplicate: 200.
                let code = if accepted.status != "duplicate" {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                json(code, &accepted)
            }
            Ok(Answer::Challenge(challenge)) => {
                tracing::info!(source = %source, outcome = "handshake", latency_ms, "handshake answered");
                text(StatusCode::OK, challenge)
            }
            Err(err) => {
                match &err {
                    InboundError::Unauthorized(reason) => tracing::warn!(
                        security_event = true, source = %source, reason = %reason, latency_ms,
                        "refused a delivery that failed verification"
                    ),
                    InboundError::Unavailable(detail) => tracing::error!(
                        source = %source, error = %detail, latency_ms, "could not accept a delivery"
                    ),
                    other => {
                        tracing::warn!(source = %source, error = %other, latency_ms, "refused a delivery")
                    }
                }
                err.into_response()
            }
        }
    }

    async fn accept(&self, source: Source, req: &Inbound) -> Result<Answer, InboundError> {
        let provider = provider(source);
        if req.method == Method::GET {
            return match provider.handshake(req, &self.secrets) {
                Some(Handshake::Challenge(c)) => Ok(Answer::Challenge(c)),
                Some(Handshake::Refused) => Err(InboundError::HandshakeRefused),
                None => Err(InboundError::MethodNotAllowed),
            };
        }
        if req.method != Method::POST {
            return Err(InboundError::MethodNotAllowed);
        }
        if req.body.len() > self.settings.max_body_bytes {
            return Err(InboundError::TooLarge {
                limit: self.settings.max_body_bytes,
            });
        }
        let now = self.clock.now();
        let public_base_url = self
            .settings
            .public_base_url
            .clone()
            .or_else(|| base_url_from_host(req));
        let ctx = VerifyContext {
            now,
            public_base_url,
        };
        // Read once, before verifying: the repository it names picks the secret. A payload
        // that cannot be read still fails verification first (401 before 400).
        let described = provider.describe(req);
        let repository = described.as_ref().ok().map(|d| &d.repository);
        let (verified, connection) = self.verify(source, req, repository, &ctx).await?;
        let described = described?;
        let payload_sha256 = sha256_hex(&req.body);
        let delivery_id = described
            .delivery_id
            .unwrap_or_else(|| payload_sha256.clone());
        let arrival = Arrival {
            source,
            key: DeliveryKey::new(source, &delivery_id),
            delivery_id,
            event_type: described.event_type,
            payload_sha256,
            signature_verified: verified == crate::providers::Verified::Signature,
            received_at: now,
            owner: connection.as_ref().map(|(_, owner)| owner.clone()),
            payload: StoredPayload {
                body: req.body.clone(),
                headers: crate::delivery_log::redact_headers(&req.headers),
                expires_at: lease(now, self.settings.payload_retention),
            },
        };
        if matches!(connection, Some((false, _))) {
            return self.record_skipped(&arrival).await.map(Answer::Delivery);
        }
        self.record_and_enqueue(&arrival, &req.body)
            .await
            .map(Answer::Delivery)
    }

    fn new_delivery(&self, a: &Arrival) -> NewDelivery {
        NewDelivery {
            key: a.key.clone(),
            source: a.source,
            delivery_id: a.delivery_id.clone(),
            event_type: a.event_type.clone(),
            payload_sha256: a.payload_sha256.clone(),
            signature_verified: a.signature_verified,
            received_at: a.received_at,
            enqueue_lease_until: lease(a.received_at, self.settings.enqueue_lease),
            expires_at: lease(a.received_at, self.settings.record_ttl()),
            owner: a.owner.clone(),
        }
    }

    /// A delivery for a disabled connection: accepted and logged as skipped, never processed.
    async fn record_skipped(&self, a: &Arrival) -> Result<Accepted, InboundError> {
        match self
            .store
            .record(&self.new_delivery(a))
            .await
            .map_err(unavailable)?
        {
            RecordOutcome::Recorded => {
                let outcome = crate::model::DeliveryOutcome {
                    status: DeliveryStatus::Skipped,
                    error: Some("the repository's connection is disabled".into()),
                    processed_at: self.clock.now(),
                    duration_ms: 0,
                };
                self.store
                    .finish(&a.key, &outcome)
                    .await
                    .map_err(unavailable)?;
                // Kept like any other, so the log shows what a disabled connection dropped.
                // Last: the embedded store answers `finish` before the disk has it (it is the
                // worker's step), and this write waits for a sync that covers it too.
                self.store
                    .put_payload(&a.key, &a.payload)
                    .await
                    .map_err(unavailable)?;
                Ok(self.accepted("skipped", a))
            }
            RecordOutcome::Exists(_) => Ok(self.accepted("duplicate", a)),
        }
    }

    async fn record_and_enqueue(&self, a: &Arrival, body: &[u8]) -> Result<Accepted, InboundError> {
        let new = self.new_delivery(a);
        let existing = match &self.intake {
            Some(intake) => {
                let message = match Envelope::text_head(
                    a.source,
                    &a.delivery_id,
                    &a.event_type,
                    a.received_at,
                    body,
                ) {
                    Some(head) => IntakeMessage::HeadOfPayload(head),
                    None => IntakeMessage::Whole(envelope_message(a, body)),
                };
                let queued_at = self.clock.now();
                match intake
                    .record_and_send(&new, message, queued_at, &a.payload)
                    .await
                    .map_err(unavailable)?
                {
                    RecordOutcome::Recorded => return Ok(self.accepted("queued", a)),
                    RecordOutcome::Exists(existing) => existing,
                }
            }
            None => match self.store.record(&new).await.map_err(unavailable)? {
                RecordOutcome::Recorded => return self.enqueue(a, body).await,
                RecordOutcome::Exists(existing) => existing,
            },
        };
        if existing.payload_sha256 != a.payload_sha256 {
            return Err(InboundError::PayloadMismatch(a.delivery_id.clone()));
        }
        if existing.status != DeliveryStatus::Received {
            return Ok(self.accepted("duplicate", a));
        }
        self.settle_in_progress(a, body).await
    }

    /// A copy of a delivery whose record is still `received`: either another request is
    /// enqueueing it right now (wait for its outcome), or an earlier attempt failed to
    /// enqueue it (take it over and enqueue it, once).
    async fn settle_in_progress(&self, a: &Arrival, body: &[u8]) -> Result<Accepted, InboundError> {
        let give_up = Instant::now() + self.settings.in_progress_wait;
        loop {
            let now = self.clock.now();
            let taken = self
                .store
                .take_over_enqueue(&a.key, now, lease(now, self.settings.enqueue_lease))
                .await
                .map_err(unavailable)?;
            if taken {
                tracing::info!(source = %a.source, delivery_id = %a.delivery_id, "re-enqueueing a delivery an earlier attempt left unqueued");
                return self.enqueue(a, body).await;
            }
            match self.store.get(&a.key).await.map_err(unavailable)? {
                Some(d) if d.status != DeliveryStatus::Received => {
                    return Ok(self.accepted("duplicate", a))
                }
                _ if Instant::now() >= give_up => {
                    return Err(InboundError::InProgress(a.delivery_id.clone()))
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn enqueue(&self, a: &Arrival, body: &[u8]) -> Result<Accepted, InboundError> {
        // The payload is kept before the message goes: a replay never finds it missing.
        if let Err(e) = self.store.put_payload(&a.key, &a.payload).await {
            if let Err(release) = self.store.release_enqueue(&a.key).await {
                tracing::warn!(source = %a.source, delivery_id = %a.delivery_id, error = %release, "could not release the enqueue lease; a retry will wait for it to end");
            }
            return Err(unavailable(e));
        }
        let message = envelope_message(a, body);
        // Taken before the send: the message is visible to the worker before send returns.
        let queued_at = self.clock.now();
        if let Err(e) = self.queue.send(&message, Duration::ZERO).await {
            // Hand the record back so the provider's retry can enqueue it at once.
            if let Err(release) = self.store.release_enqueue(&a.key).await {
                tracing::warn!(source = %a.source, delivery_id = %a.delivery_id, error = %release, "could not release the enqueue lease; a retry will wait for it to end");
            }
            return Err(InboundError::Unavailable(e.to_string()));
        }
        if let Err(e) = self.store.mark_queued(&a.key, queued_at).await {
            // The message is on the queue, so the delivery is safe; the worker moves it on.
            tracing::warn!(source = %a.source, delivery_id = %a.delivery_id, error = %e, "queued, but could not mark the record queued");
        }
        Ok(self.accepted("queued", a))
    }

    fn accepted(&self, status: &'static str, a: &Arrival) -> Accepted {
        Accepted {
            status,
            source: a.source,
            delivery_id: a.delivery_id.clone(),
        }
    }
}

enum Answer {
    Delivery(Accepted),
    Challenge(String),
}

/// What an answer counts as among inbound deliveries; `None` for what is not a delivery (a
/// WhatsApp handshake, another method).
fn delivery_outcome(result: &Result<Answer, InboundError>) -> Option<InboundOutcome> {
    Some(match result {
        Ok(Answer::Delivery(a)) if a.status == "duplicate" => InboundOutcome::Duplicate,
        Ok(Answer::Delivery(_)) => InboundOutcome::Accepted,
        Ok(Answer::Challenge(_)) => return None,
        Err(InboundError::MethodNotAllowed | InboundError::HandshakeRefused) => return None,
        Err(InboundError::TooLarge { .. }) => InboundOutcome::TooLarge,
        Err(InboundError::Unauthorized(_)) => InboundOutcome::InvalidSignature,
        Err(InboundError::Malformed(_) | InboundError::PayloadMismatch(_)) => {
            InboundOutcome::Malformed
        }
        Err(InboundError::InProgress(_) | InboundError::Unavailable(_)) => {
            InboundOutcome::Unavailable
        }
    })
}

/// The queue message of a delivery: its envelope (`Envelope::to_message`).
fn envelope_message(a: &Arrival, body: &[u8]) -> String {
    Envelope::new(a.source, &a.delivery_id, &a.event_type, a.received_at, body).to_message()
}

fn unavailable(e: impl std::fmt::Display) -> InboundError {
    InboundError::Unavailable(e.to_string())
}

/// Without `WEBHOOK_BASE_URL`, the URL the provider called is rebuilt from the `Host` header
/// (API Gateway's domain, or a custom domain in front of it) and `X-Forwarded-Proto`.
fn base_url_from_host(req: &Inbound) -> Option<String> {
    let host = req.header("host")?;
    let proto = req.header("x-forwarded-proto").unwrap_or("https");
    Some(format!("{proto}://{host}"))
}

fn to_inbound(req: Request) -> Inbound {
    let (parts, body) = req.into_parts();
    Inbound {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
        body,
    }
}
