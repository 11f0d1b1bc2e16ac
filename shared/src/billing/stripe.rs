//! The Stripe API client billing calls: customers, Checkout and Customer Portal sessions, and
//! subscriptions for reconciliation. Requests are form-encoded as Stripe's API takes them, with
//! a pinned `Stripe-Version` and the caller's `Idempotency-Key` on every POST.

use crate::secret::Secret;
use serde::Deserialize;
use serde_json::Value;
use std::fmt;
use std::time::Duration;

/// Where Stripe's API lives; `STRIPE_API_BASE` points elsewhere (localstripe, a stub).
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

/// The API version every call asks for, so a change of the account's default version cannot
/// change the shapes Hookline parses. The same version as the webhook samples in `events/`:
/// subscriptions still carry `current_period_end` and items both `price` and `plan`.
pub const STRIPE_VERSION: &str = "2024-06-20";

/// Stripe's own limit on a page of a list.
pub const MAX_PAGE: u32 = 100;

/// How long one call may take; Stripe answers creates in well under this.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What went wrong talking to Stripe. Neither variant ever carries the secret key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with its error shape, `{"error": {"type", "code", "message", …}}`.
    #[error("Stripe refused the request (HTTP {status}, {kind}{}): {message}", code_suffix(.code))]
    Api {
        status: u16,
        /// `error.type`: `invalid_request_error`, `card_error`, `idempotency_error`, `api_error`.
        kind: String,
        code: Option<String>,
        message: String,
    },
    /// Stripe could not be reached, or answered something that is not its API.
    #[error("Stripe could not be reached or answered unexpectedly: {0}")]
    Transport(String),
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref()
        .map(|c| format!(", {c}"))
        .unwrap_or_default()
}

/// A customer Stripe created; the rest of the object is not needed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Customer {
    pub id: String,
}

/// A Checkout or Customer Portal session: where to send the user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Session {
    pub id: String,
    pub url: String,
}

/// A subscription-mode Checkout Session for one org and one price.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutRequest<'a> {
    pub customer_id: &'a str,
    pub price_id: &'a str,
    pub org_id: &'a str,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
}

/// One page of a Stripe list. The objects stay JSON: billing parses a subscription from the
/// API the same way it parses one from a webhook event.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct List {
    pub data: Vec<Value>,
    pub has_more: bool,
}

/// Stripe's error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

/// A client for one Stripe account (one secret key) at one API base.
#[derive(Clone)]
pub struct StripeClient {
    base: String,
    key: Secret,
    http: reqwest::Client,
}

impl fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base)
            .field("key", &self.key)
            .finish()
    }
}

impl StripeClient {
    /// A client for `api_base` (no trailing `/v1`), authenticating with `secret_key`.
    pub fn new(api_base: &str, secret_key: Secret) -> Self {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("Hookline/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds (rustls, no custom roots)");
        Self {
            base: api_base.trim_end_matches('/').to_string(),
            key: secret_key,
            http,
        }
    }

    pub fn api_base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/customers` with `metadata[org_id]`, so every event about this customer says
    /// which org it belongs to.
    pub async fn create_customer(
        &self,
        org_id: &str,
        email: Option<&str>,
        name: Option<&str>,
        idempotency_key: &str,
    ) -> Result<Customer, StripeError> {
        let mut form = vec![("metadata[org_id]", org_id)];
        if let Some(email) = email {
            form.push(("email", email));
        }
        if let Some(name) = name {
            form.push(("name", name));
        }
        self.post("/v1/customers", &form, idempotency_key).await
    }

    /// `POST /v1/checkout/sessions` in subscription mode for one price; the org id rides on the
    /// session and on the subscription it creates.
    pub async fn create_checkout_session(
        &self,
        req: CheckoutRequest<'_>,
        idempotency_key: &str,
    ) -> Result<Session, StripeError> {
        let form = [
            ("mode", "subscription"),
            ("customer", req.customer_id),
            ("line_items[0][price]", req.price_id),
            ("line_items[0][quantity]", "1"),
            ("success_url", req.success_url),
            ("cancel_url", req.cancel_url),
            ("client_reference_id", req.org_id),
            ("metadata[org_id]", req.org_id),
            ("subscription_data[metadata][org_id]", req.org_id),
        ];
        self.post("/v1/checkout/sessions", &form, idempotency_key)
            .await
    }

    /// `POST /v1/billing_portal/sessions`: the Customer Portal for `customer_id`.
    pub async fn create_portal_session(
        &self,
        customer_id: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<Session, StripeError> {
        let form = [("customer", customer_id), ("return_url", return_url)];
        self.post("/v1/billing_portal/sessions", &form, idempotency_key)
            .await
    }

    /// One page of `GET /v1/subscriptions?status=all` (cancelled ones included, which
    /// reconciliation needs), optionally for one customer. `limit` is clamped to 1..=100.
    pub async fn list_subscriptions(
        &self,
        customer: Option<&str>,
        starting_after: Option<&str>,
        limit: u32,
    ) -> Result<List, StripeError> {
        let limit = limit.clamp(1, MAX_PAGE).to_string();
        let mut query = vec![("status", "all"), ("limit", limit.as_str())];
        if let Some(customer) = customer {
            query.push(("customer", customer));
        }
        if let Some(after) = starting_after {
            query.push(("starting_after", after));
        }
        self.get("/v1/subscriptions", &query).await
    }

    /// Every subscription (of one customer, or of the account), paging through
    /// [`Self::list_subscriptions`] `page` at a time.
    pub async fn subscriptions(
        &self,
        customer: Option<&str>,
        page: u32,
    ) -> Result<Vec<Value>, StripeError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let list = self
                .list_subscriptions(customer, after.as_deref(), page)
                .await?;
            let more = list.has_more;
            all.extend(list.data);
            if !more {
                return Ok(all);
            }
            // A page that says "more" must end with an object to continue after; otherwise
            // the loop would ask for the same page for ever.
            let last = all
                .last()
                .and_then(|s| s.get("id"))
                .and_then(Value::as_str)
                .map(str::to_string);
            match last {
                Some(id) if after.as_deref() != Some(id.as_str()) => after = Some(id),
                _ => return Err(StripeError::Transport(
                    "a subscriptions page said has_more but gave no new object to continue after"
                        .into(),
                )),
            }
        }
    }

    /// `GET /v1/customers/{id}`, as JSON.
    /// The refunds of one charge (`GET /v1/refunds?charge=`), at most [`MAX_PAGE`]: a
    /// `charge.refunded` event of an API version since 2022-11-15 no longer carries them.
    pub async fn charge_refunds(&self, charge_id: &str) -> Result<Vec<Value>, StripeError> {
        let limit = MAX_PAGE.to_string();
        let list: List = self
            .get(
                "/v1/refunds",
                &[("charge", charge_id), ("limit", limit.as_str())],
            )
            .await?;
        Ok(list.data)
    }

    /// One charge (`GET /v1/charges/{id}`): whose a refund is, when the refund does not say.
    pub async fn get_charge(&self, id: &str) -> Result<Value, StripeError> {
        let path = format!("/v1/charges/{}", crate::hooks::encode_segment(id));
        self.get(&path, &[]).await
    }

    pub async fn get_customer(&self, id: &str) -> Result<Value, StripeError> {
        let path = format!("/v1/customers/{}", crate::hooks::encode_segment(id));
        self.get(&path, &[]).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        form: &[(&str, &str)],
        idempotency_key: &str,
    ) -> Result<T, StripeError> {
        let body = serde_urlencoded::to_string(form).map_err(|e| {
            StripeError::Transport(format!("cannot encode the form for {path}: {e}"))
        })?;
        let req = self
            .request(reqwest::Method::POST, path)
            .header("Idempotency-Key", idempotency_key)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        self.send(path, req).await
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, StripeError> {
        let req = self.request(reqwest::Method::GET, path).query(query);
        self.send(path, req).await
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.key.expose())
            .header("Stripe-Version", STRIPE_VERSION)
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, StripeError> {
        // reqwest's error names the URL, which holds no secret (the key is in a header).
        let res = req
            .send()
            .await
            .map_err(|e| StripeError::Transport(format!("{path}: {e}")))?;
        let status = res.status();
        let bytes = res
            .bytes()
            .await
            .map_err(|e| StripeError::Transport(format!("{path}: reading the answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                StripeError::Transport(format!(
                    "{path} answered HTTP {} with a body that is not the expected object: {e}",
                    status.as_u16()
                ))
            });
        }
        Err(self.api_error(status.as_u16(), &bytes))
    }

    /// Stripe's error body as [`StripeError::Api`]; a body of another shape (a proxy's page)
    /// still says which status came back, without repeating the body.
    fn api_error(&self, status: u16, body: &[u8]) -> StripeError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => StripeError::Api {
                status,
                kind: error.kind.unwrap_or_else(|| "api_error".into()),
                code: error.code,
                message: redact(
                    &error
                        .message
                        .unwrap_or_else(|| format!("HTTP {status} without a message")),
                    &self.key,
                ),
            },
            Err(_) => StripeError::Api {
                status,
                kind: "api_error".into(),
                code: None,
                message: format!("HTTP {status} without Stripe's error body"),
            },
        }
    }
}

/// Stripe's "Invalid API Key provided: sk_test_****1234" echoes part of the key: every word
/// that looks like a Stripe secret or restricted key, and the key itself, become `***`.
fn redact(message: &str, key: &Secret) -> String {
    let mut out = if key.is_empty() {
        message.to_string()
    } else {
        message.replace(key.expose(), "***")
    };
    let looks_like_key = |w: &str| {
        let w = w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_' && c != '*');
        w.starts_with("sk_") || w.starts_with("rk_")
    };
    if out.split_whitespace().any(looks_like_key) {
        out = out
            .split(' ')
            .map(|w| if looks_like_key(w) { "***" } else { w })
            .collect::<Vec<_>>()
            .join(" ");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripes_echo_of_a_key_is_redacted_whole() {
        let key = Secret::new("sk_test_abcdefgh12345678");
        let msg = "Invalid API Key provided: sk_test_****************5678";
        assert_eq!(redact(msg, &key), "Invalid API Key provided: ***");
        assert_eq!(
            redact("key sk_test_abcdefgh12345678 is wrong", &key),
            "key *** is wrong"
        );
        assert_eq!(
            redact("No such price: 'price_x'", &key),
            "No such price: 'price_x'"
        );
    }

    #[test]
    fn the_debug_of_a_client_hides_its_key() {
        let client = StripeClient::new("http://127.0.0.1:1/", Secret::new("sk_test_hidden123"));
        let debug = format!("{client:?}");
        assert!(!debug.contains("hidden123"), "{debug}");
        assert_eq!(client.api_base(), "http://127.0.0.1:1");
    }

    #[test]
    fn an_api_error_reads_as_stripe_said_it() {
        let e = StripeError::Api {
            status: 400,
            kind: "invalid_request_error".into(),
            code: Some("resource_missing".into()),
            message: "No such customer: 'cus_x'".into(),
        };
        assert_eq!(
            e.to_string(),
            "Stripe refused the request (HTTP 400, invalid_request_error, resource_missing): \
             No such customer: 'cus_x'"
        );
    }
}
