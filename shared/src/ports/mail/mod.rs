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
