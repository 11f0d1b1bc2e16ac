//! The provider webhook routes. One pipeline serves them all (`Pipeline::handle(source, …)`,
//! routed by `Source::route`), so each provider's route is described here, where its headers
//! and answers can be named, rather than on that one function.

use crate::http::Problem;
use crate::pipeline::Accepted;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;

/// A provider's body: bytes, verified exactly as they arrived (never re-serialised).
pub struct ProviderBody;

impl utoipa::PartialSchema for ProviderBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("binary".into())))
            .description(Some(
                "The provider's body exactly as it sent it: verified over these bytes, stored \
                 and queued unchanged",
            ))
            .into()
    }
}

impl utoipa::ToSchema for ProviderBody {}

/// A GitHub delivery
///
/// Verified with `X-Hub-Signature-256` (HMAC-SHA256 of the body with the connected
/// repository's secret, or `GITHUB_WEBHOOK_SECRET`); deduplicated on `X-GitHub-Delivery`.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/github",
    tag = "webhooks",
    params(
        ("X-Hub-Signature-256" = Option<String>, Header, description = "`sha256=<hex HMAC>`"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery id (the dedupe key)"),
        ("X-GitHub-Event" = Option<String>, Header, description = "The event type"),
    ),
    request_body(content = inline(ProviderBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Taken: queued for the worker (or skipped for a disabled connection)", body = Accepted),
        (status = 200, description = "A duplicate of a delivery already taken", body = Accepted),
        (status = 400, description = "Verified, but the body or a header it needs cannot be read", body = Problem),
        (status = 401, description = "Missing or wrong signature: nothing was recorded", body = Problem),
        (status = 409, description = "A known delivery id with a different payload", body = Problem),
        (status = 413, description = "The body is over `HOOKLINE_MAX_BODY_BYTES`", body = Problem),
        (status = 503, description = "The store or queue is unavailable: retry (nothing is lost)", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn github() {}

/// A GitLab delivery
///
/// Verified with `X-Gitlab-Token`, or a Standard Webhooks signature (`webhook-id`,
/// `webhook-timestamp`, `webhook-signature`) when a signing token is set; deduplicated on
/// `Idempotency-Key`, else `X-Gitlab-Event-UUID`.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/gitlab",
    tag = "webhooks",
    params(
        ("X-Gitlab-Token" = Option<String>, Header, description = "The hook's secret token"),
        ("X-Gitlab-Event" = Option<String>, Header, description = "The event type"),
        ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "The event's id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The delivery id (the dedupe key)"),
        ("webhook-id" = Option<String>, Header, description = "Standard Webhooks: the message id"),
        ("webhook-timestamp" = Option<String>, Header, description = "Standard Webhooks: seconds since the epoch"),
        ("webhook-signature" = Option<String>, Header, description = "Standard Webhooks: `v1,<base64>` entries"),
    ),
    request_body(content = inline(ProviderBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Taken: queued for the worker (or skipped for a disabled connection)", body = Accepted),
        (status = 200, description = "A duplicate of a delivery already taken", body = Accepted),
        (status = 400, description = "Verified, but the body or a header it needs cannot be read", body = Problem),
        (status = 401, description = "Missing or wrong token or signature: nothing was recorded", body = Problem),
        (status = 409, description = "A known delivery id with a different payload", body = Problem),
        (status = 413, description = "The body is over `HOOKLINE_MAX_BODY_BYTES`", body = Problem),
        (status = 503, description = "The store or queue is unavailable: retry (nothing is lost)", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn gitlab() {}

/// A Jira delivery
///
/// Verified with `X-Hub-Signature: sha256=…`, or the legacy `?secret=`; accepted unsigned
/// when `JIRA_WEBHOOK_SECRET` is not set. Deduplicated on `X-Atlassian-Webhook-Identifier`.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/jira",
    tag = "webhooks",
    params(
        ("X-Hub-Signature" = Option<String>, Header, description = "`sha256=<hex HMAC>`"),
        ("X-Atlassian-Webhook-Identifier" = Option<String>, Header, description = "The delivery id (the dedupe key)"),
        ("secret" = Option<String>, Query, description = "Older Jira: the secret in the URL"),
    ),
    request_body(content = inline(ProviderBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Taken: queued for the worker", body = Accepted),
        (status = 200, description = "A duplicate of a delivery already taken", body = Accepted),
        (status = 400, description = "Verified (or unsigned), but the body or a header it needs cannot be read", body = Problem),
        (status = 401, description = "Missing or wrong signature: nothing was recorded", body = Problem),
        (status = 409, description = "A known delivery id with a different payload", body = Problem),
        (status = 413, description = "The body is over `HOOKLINE_MAX_BODY_BYTES`", body = Problem),
        (status = 503, description = "The store or queue is unavailable: retry (nothing is lost)", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn jira() {}

/// A Stripe event
///
/// Verified with `Stripe-Signature` (`t=`, any `v1=`, 300 s tolerance); deduplicated on the
/// event's `id`. Billing events are applied to the org whose customer they name.
#[utoipa::path(
    post,
    path = "/api/v1/billing/webhooks/stripe",
    tag = "webhooks",
    params(
        ("Stripe-Signature" = Option<String>, Header, description = "`t=<seconds>,v1=<hex HMAC>`"),
    ),
    request_body(content = inline(ProviderBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Taken: queued for the worker", body = Accepted),
        (status = 200, description = "A duplicate of an event already taken", body = Accepted),
        (status = 400, description = "Verified, but the body cannot be read as an event", body = Problem),
        (status = 401, description = "Missing, stale or wrong signature: nothing was recorded", body = Problem),
        (status = 409, description = "A known event id with a different payload", body = Problem),
        (status = 413, description = "The body is over `HOOKLINE_MAX_BODY_BYTES`", body = Problem),
        (status = 503, description = "The store or queue is unavailable: retry (nothing is lost)", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn stripe() {}

/// A Twilio callback
///
/// Verified with `X-Twilio-Signature` over `WEBHOOK_BASE_URL` + path + query and the sorted
/// form fields (JSON bodies: `bodySHA256` in the query); deduplicated on
/// `I-Twilio-Idempotency-Token`, else the body's SHA-256.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/twilio",
    tag = "webhooks",
    params(
        ("X-Twilio-Signature" = Option<String>, Header, description = "Base64 HMAC-SHA1"),
        ("I-Twilio-Idempotency-Token" = Option<String>, Header, description = "The delivery id (the dedupe key)"),
        ("bodySHA256" = Option<String>, Query, description = "JSON bodies: the body's SHA-256, hex"),
    ),
    request_body(content = inline(ProviderBody), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 202, description = "Taken: queued for the worker", body = Accepted),
        (status = 200, description = "A duplicate of a delivery already taken", body = Accepted),
        (status = 400, description = "Verified, but the body cannot be read", body = Problem),
        (status = 401, description = "Missing or wrong signature: nothing was recorded", body = Problem),
        (status = 409, description = "A known delivery id with a different payload", body = Problem),
        (status = 413, description = "The body is over `HOOKLINE_MAX_BODY_BYTES`", body = Problem),
        (status = 503, description = "The store or queue is unavailable: retry (nothing is lost)", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn twilio() {}

/// WhatsApp's verification handshake
///
/// Meta's `GET` when the callback URL is set: answered with `hub.challenge` when
/// `hub.verify_token` equals `WHATSAPP_VERIFY_TOKEN`.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/whatsapp",
    tag = "webhooks",
    params(
        ("hub.mode" = Option<String>, Query, description = "`subscribe`"),
        ("hub.verify_token" = Option<String>, Query, description = "Must equal `WHATSAPP_VERIFY_TOKEN`"),
        ("hub.challenge" = Option<String>, Query, description = "Echoed back on success"),
    ),
    responses(
        (status = 200, description = "The challenge, echoed", body = String, content_type = "text/plain"),
        (status = 400, description = "The handshake's parameters are missing or malformed", body = Problem),
        (status = 403, description = "The verify token does not match", body = Problem),
        (status = 503, description = "Unavailable: retry", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn whatsapp_handshake() {}

/// A WhatsApp Cloud API delivery
///
/// Verified with `X-Hub-Signature-256` (the app secret); deduplicated on the body's SHA-256.
#[utoipa::path(
    post,
    path = "/api/v1/webhooks/whatsapp",
    tag = "webhooks",
    params(
        ("X-Hub-Signature-256" = Option<String>, Header, description = "`sha256=<hex HMAC>`"),
    ),
    request_body(content = inline(ProviderBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Taken: queued for the worker", body = Accepted),
        (status = 200, description = "A duplicate of a delivery already taken", body = Accepted),
        (status = 400, description = "Verified, but the body cannot be read", body = Problem),
        (status = 401, description = "Missing or wrong signature: nothing was recorded", body = Problem),
        (status = 409, description = "A known delivery id with a different payload", body = Problem),
        (status = 413, description = "The body is over `HOOKLINE_MAX_BODY_BYTES`", body = Problem),
        (status = 503, description = "The store or queue is unavailable: retry (nothing is lost)", body = Problem,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
)]
#[allow(dead_code)]
pub(super) fn whatsapp() {}
