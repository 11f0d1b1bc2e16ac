//! The behaviour every [`SecretSource`] must have. The fixture puts [`fixture_value`] under
//! every name of [`ProviderSecrets::NAMES`] except [`UNSET`], which it leaves empty.

use super::SecretSource;
use crate::providers::ProviderSecrets;

/// The one name a fixture stores as an empty string: empty counts as unset.
pub const UNSET: &str = "GITLAB_WEBHOOK_SIGNING_TOKEN";

pub fn fixture_value(name: &str) -> String {
    format!("value-of-{name}")
}

pub async fn every_named_secret_is_loaded(source: &dyn SecretSource) {
    let s: ProviderSecrets = source.load().await.unwrap();
    let got = [
        ("GITHUB_WEBHOOK_SECRET", &s.github_webhook_secret),
        ("GITLAB_WEBHOOK_TOKEN", &s.gitlab_webhook_token),
        ("GITLAB_WEBHOOK_SIGNING_TOKEN", &s.gitlab_signing_token),
        ("JIRA_WEBHOOK_SECRET", &s.jira_webhook_secret),
        ("STRIPE_WEBHOOK_SECRET", &s.stripe_webhook_secret),
        ("TWILIO_AUTH_TOKEN", &s.twilio_auth_token),
        ("WHATSAPP_APP_SECRET", &s.whatsapp_app_secret),
        ("WHATSAPP_VERIFY_TOKEN", &s.whatsapp_verify_token),
    ];
    for (name, value) in got {
        if name == UNSET {
            assert!(value.is_none(), "{name}: an empty value counts as unset");
        } else {
            assert_eq!(
                value.as_ref().map(|v| v.expose().to_string()),
                Some(fixture_value(name)),
                "{name}"
            );
        }
    }
}
