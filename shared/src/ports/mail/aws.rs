//! The SES mailer (aws-sdk-sesv2): each message one plain-text `Simple` SendEmail from the
//! deployment's verified sender (`HOOKLINE_MAIL_FROM`), subject and text marked UTF-8.
//! SES's refusals (a malformed address, an unverified sender) are `Rejected`; throttling, a
//! paused account or an unreachable service are `Unavailable`. Errors never carry the recipient.

use super::{check, Mail, MailError, Mailer};
use crate::ports::store::aws::error_chain;
use async_trait::async_trait;
use aws_sdk_sesv2::error::SdkError;
use aws_sdk_sesv2::operation::send_email::SendEmailError;
use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
use aws_sdk_sesv2::Client;

/// The environment variable naming the sender address (an SES-verified identity).
pub const MAIL_FROM_ENV: &str = "HOOKLINE_MAIL_FROM";

/// The AWS adapter of [`Mailer`].
#[derive(Debug, Clone)]
pub struct SesMailer {
    client: Client,
    from: String,
}

impl SesMailer {
    pub fn new(client: Client, from: String) -> Self {
        Self { client, from }
    }

    /// The mailer sending from `HOOKLINE_MAIL_FROM`; `None` when it is unset or empty (the
    /// deployment then has no mail, and says so at start-up).
    pub fn from_env(client: Client) -> Option<Self> {
        std::env::var(MAIL_FROM_ENV)
            .ok()
            .map(|from| from.trim().to_owned())
            .filter(|from| !from.is_empty())
            .map(|from| Self::new(client, from))
    }

    pub fn from_address(&self) -> &str {
        &self.from
    }
}

fn utf8(data: &str) -> Result<Content, MailError> {
    Content::builder()
        .data(data)
        .charset("UTF-8")
        .build()
        .map_err(|e| MailError::Rejected(format!("building the message: {e}")))
}

#[async_trait]
impl Mailer for SesMailer {
    async fn send(&self, mail: &Mail) -> Result<String, MailError> {
        check(mail)?;
        if self.from.trim().is_empty() {
            // A deploy without MailFrom: owners are not mailed, and each notice says why.
            return Err(MailError::Rejected(format!(
                "{MAIL_FROM_ENV} is not set: set the MailFrom parameter to an SES-verified sender"
            )));
        }
        let message = Message::builder()
            .subject(utf8(&mail.subject)?)
            .body(Body::builder().text(utf8(&mail.text)?).build())
            .build();
        let out = self
            .client
            .send_email()
            .from_email_address(&self.from)
            .destination(Destination::builder().to_addresses(&mail.to).build())
            .content(EmailContent::builder().simple(message).build())
            .send()
            .await
            .map_err(|e| classify(e, &mail.to))?;
        out.message_id()
            .map(str::to_owned)
            .ok_or_else(|| MailError::Unavailable("SES SendEmail answered no message id".into()))
    }
}

/// SES's refusals are the caller's to fix (`Rejected`); the rest may pass (`Unavailable`).
/// An error SES's model does not name (an emulator's, a new one) is judged by its HTTP status.
fn classify(err: SdkError<SendEmailError>, recipient: &str) -> MailError {
    let redact = |text: String| text.replace(recipient, "<recipient>");
    let status = err.raw_response().map(|r| r.status().as_u16());
    let text = redact(format!("SES SendEmail: {}", error_chain(&err)));
    let SdkError::ServiceError(service) = err else {
        return MailError::Unavailable(text);
    };
    match service.err() {
        SendEmailError::BadRequestException(_)
        | SendEmailError::MessageRejected(_)
        | SendEmailError::MailFromDomainNotVerifiedException(_)
        | SendEmailError::NotFoundException(_) => MailError::Rejected(text),
        SendEmailError::AccountSuspendedException(_)
        | SendEmailError::LimitExceededException(_)
        | SendEmailError::SendingPausedException(_)
        | SendEmailError::TooManyRequestsException(_) => MailError::Unavailable(text),
        _ if status == Some(400) => MailError::Rejected(text),
        _ => MailError::Unavailable(text),
    }
}
