//! The HTTP shapes every handler speaks, on Lambda and in the local server alike: a request
//! with its exact raw body in, a response out, and errors as a JSON problem body.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

pub type Request = http::Request<Bytes>;
pub type Response = http::Response<Bytes>;

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut res = http::Response::new(Bytes::from(bytes));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// A plain-text response (handshake challenges).
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut res = http::Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The JSON body of every error: a stable machine-readable code and a sentence saying what
/// to fix. Internal details stay in the log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem<'a> {
    /// A stable code: `invalid_request`, `unauthorized`, `forbidden`, `not_found`, …
    pub error: &'a str,
    /// What went wrong and what to do about it, for a person to read.
    pub message: String,
}

pub fn problem(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json(
        status,
        &Problem {
            error: code,
            message: message.into(),
        },
    )
}
