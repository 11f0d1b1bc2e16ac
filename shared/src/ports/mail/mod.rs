//! The mail port: how Hookline tells a person something (a dead-lettered delivery, a disabled
//! endpoint, a payment). SES on AWS (`aws.rs`), an outbox folder of files locally
//! (`embedded.rs`). Sending is best effort for the caller: see `outbound::notify`.

use async_trait::async_trait;

pub mod aws;
pub mod conformance;
pub mod embedded;

/// One plain-text message to one person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub text: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The address or message was refused (a malformed address, a sender not verified).
    #[error("mail refused: {0}")]
    Rejected(String),
    /// The mail service could not be reached or failed.
    #[error("mail service unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    /// Send the message; the service's message id.
    async fn send(&self, mail: &Mail) -> Result<String, MailError>;
}

/// The longest address SMTP carries (RFC 5321's path limit less its angle brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// Why `address` cannot be a recipient, or `None` when it looks deliverable: one `@` with
/// something before it, a domain with a dot that neither starts nor ends it, no spaces or
/// control characters, at most [`MAX_ADDRESS_LEN`] bytes. Deliberately loose (no RFC 5322
/// grammar): the mail service has the last word. The reason never quotes the address.
pub fn address_problem(address: &str) -> Option<&'static str> {
    if address.len() > MAX_ADDRESS_LEN {
        return Some("is longer than 254 characters");
    }
    if address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("must not contain spaces or control characters");
    }
    let Some((local, domain)) = address.split_once('@') else {
        return Some("must contain an @");
    };
    if domain.contains('@') {
        return Some("must contain exactly one @");
    }
    if local.is_empty() {
        return Some("needs a name before the @");
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Some("needs a domain with a dot after the @, such as example.com");
    }
    None
}

/// What both adapters refuse before sending: a recipient [`address_problem`] refuses, and a
/// subject with a line break (a header cannot carry one; SES would fold or refuse it).
pub fn check(mail: &Mail) -> Result<(), MailError> {
    if let Some(problem) = address_problem(&mail.to) {
        return Err(MailError::Rejected(format!(
            "the recipient address {problem}"
        )));
    }
    if mail.subject.contains(['\r', '\n']) {
        return Err(MailError::Rejected(
            "the subject must be one line".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_addresses_pass_and_malformed_ones_say_why() {
        for ok in [
            "owner@example.com",
            "a.b+tag@sub.example.co.uk",
            "zoë@exämple.de",
        ] {
            assert_eq!(address_problem(ok), None, "{ok}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "owner",
            "owner@",
            "@example.com",
            "owner@example",
            "owner@.com",
            "owner@example.",
            "a@b@example.com",
            "own er@example.com",
            "owner@example.com\n",
            long.as_str(),
        ] {
            assert!(address_problem(bad).is_some(), "{bad:?}");
        }
    }
}
