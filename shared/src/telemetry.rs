//! Hookline's metrics, recorded once through the `metrics` facade: the local server renders
//! them as Prometheus text (`GET /metrics`), a Lambda writes them as CloudWatch Embedded Metric
//! Format lines after each invocation. Names and labels are a contract (template.yaml's alarms
//! name them); labels stay bounded — never an org, repository, endpoint or delivery id.
//!
//! Every label value is a string literal in a `match` arm, so each call site's key is a
//! `static` the macros build once: recording allocates nothing and hashes nothing on the hot
//! path (the local server takes 20k deliveries/s).

use crate::model::Source;
use metrics::Unit;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::time::Duration;

pub const INBOUND_DELIVERIES: &str = "hookline_inbound_deliveries_total";
pub const SIGNATURE_FAILURES: &str = "hookline_signature_failures_total";
pub const HOOK_OPERATIONS: &str = "hookline_hook_operations_total";
pub const STORE_ERRORS: &str = "hookline_store_errors_total";
pub const INCIDENTS: &str = "hookline_incidents_total";
pub const OUTBOUND_ATTEMPTS: &str = "hookline_outbound_attempts_total";
pub const OUTBOUND_DEAD_LETTERED: &str = "hookline_outbound_dead_lettered_total";
pub const ENDPOINTS_DISABLED: &str = "hookline_endpoints_disabled_total";
pub const STRIPE_EVENTS_APPLIED: &str = "hookline_stripe_events_applied_total";
pub const MAILS: &str = "hookline_mails_total";
pub const INGEST_SECONDS: &str = "hookline_ingest_seconds";
pub const PROCESSING_SECONDS: &str = "hookline_processing_seconds";
pub const OUTBOUND_ATTEMPT_SECONDS: &str = "hookline_outbound_attempt_seconds";
pub const QUEUE_DEPTH: &str = "hookline_queue_depth";
pub const QUEUE_OLDEST_AGE_SECONDS: &str = "hookline_queue_oldest_age_seconds";

/// Units and help texts, for the recorder just installed (Prometheus `# HELP`; EMF `Unit`).
pub fn describe() {
    describe_counter!(
        INBOUND_DELIVERIES,
        Unit::Count,
        "Inbound provider deliveries by source and outcome"
    );
    describe_counter!(
        SIGNATURE_FAILURES,
        Unit::Count,
        "Inbound deliveries refused because their signature did not verify"
    );
    describe_counter!(
        HOOK_OPERATIONS,
        Unit::Count,
        "Provider webhooks created, deleted and repaired, by outcome"
    );
    describe_counter!(
        STORE_ERRORS,
        Unit::Count,
        "Store errors while the worker processed a delivery"
    );
    describe_counter!(INCIDENTS, Unit::Count, "Incidents opened and resolved");
    describe_counter!(
        OUTBOUND_ATTEMPTS,
        Unit::Count,
        "Outbound delivery attempts by outcome"
    );
    describe_counter!(
        OUTBOUND_DEAD_LETTERED,
        Unit::Count,
        "Outbound deliveries given up on (dead-lettered)"
    );
    describe_counter!(
        ENDPOINTS_DISABLED,
        Unit::Count,
        "Endpoints Hookline disabled (410 Gone, or failing for OUTBOUND_DISABLE_AFTER)"
    );
    describe_counter!(
        STRIPE_EVENTS_APPLIED,
        Unit::Count,
        "Stripe events applied to an org's billing, by type family"
    );
    describe_counter!(MAILS, Unit::Count, "Mails to org owners, sent or failed");
    describe_histogram!(
        INGEST_SECONDS,
        Unit::Seconds,
        "Inbound route entry to answer"
    );
    describe_histogram!(
        PROCESSING_SECONDS,
        Unit::Seconds,
        "A delivery received to processed by the worker (first attempt)"
    );
    describe_histogram!(
        OUTBOUND_ATTEMPT_SECONDS,
        Unit::Seconds,
        "One outbound HTTP attempt"
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Messages on a local queue (inbound: waiting, delayed or in flight; outbound: deliveries with an attempt scheduled)"
    );
    describe_gauge!(
        QUEUE_OLDEST_AGE_SECONDS,
        Unit::Seconds,
        "Inbound: age of the oldest message; outbound: how long the longest-waiting due attempt has been due"
    );
}

/// One `match` arm per source, each calling `$m!` with the source's label as a literal first.
macro_rules! by_source {
    ($source:expr, $m:ident!($($args:tt)*)) => {
        match $source {
            Source::Github => $m!("github", $($args)*),
            Source::Gitlab => $m!("gitlab", $($args)*),
            Source::Jira => $m!("jira", $($args)*),
            Source::Stripe => $m!("stripe", $($args)*),
            Source::Twilio => $m!("twilio", $($args)*),
            Source::Whatsapp => $m!("whatsapp", $($args)*),
        }
    };
}

/// What became of an inbound delivery (`outcome` of [`INBOUND_DELIVERIES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundOutcome {
    /// Taken: queued, or logged as skipped for a disabled connection.
    Accepted,
    Duplicate,
    InvalidSignature,
    /// A verified body that cannot be read (400), or a known id with another payload (409).
    Malformed,
    TooLarge,
    /// The store or queue could not take it (503): the provider retries.
    Unavailable,
}

macro_rules! inbound_counter {
    ($source:literal, $outcome:expr) => {
        match $outcome {
            InboundOutcome::Accepted => counter!("hookline_inbound_deliveries_total", "source" => $source, "outcome" => "accepted"),
            InboundOutcome::Duplicate => counter!("hookline_inbound_deliveries_total", "source" => $source, "outcome" => "duplicate"),
            InboundOutcome::InvalidSignature => counter!("hookline_inbound_deliveries_total", "source" => $source, "outcome" => "invalid_signature"),
            InboundOutcome::Malformed => counter!("hookline_inbound_deliveries_total", "source" => $source, "outcome" => "malformed"),
            InboundOutcome::TooLarge => counter!("hookline_inbound_deliveries_total", "source" => $source, "outcome" => "too_large"),
            InboundOutcome::Unavailable => counter!("hookline_inbound_deliveries_total", "source" => $source, "outcome" => "unavailable"),
        }
    };
}

macro_rules! ingest_histogram {
    ($source:literal,) => {
        histogram!("hookline_ingest_seconds", "source" => $source)
    };
}

/// One inbound delivery answered: its outcome, and the time from route entry to answer.
pub fn inbound(source: Source, outcome: InboundOutcome, took: Duration) {
    by_source!(source, inbound_counter!(outcome)).increment(1);
    by_source!(source, ingest_histogram!()).record(took.as_secs_f64());
    if outcome == InboundOutcome::InvalidSignature {
        counter!("hookline_signature_failures_total").increment(1);
    }
}

/// A delivery the worker finished on its first attempt, `took` after it was received.
pub fn processed(took: Duration) {
    histogram!("hookline_processing_seconds").record(took.as_secs_f64());
}

/// The store failed while the worker processed a delivery (the queue retries it).
pub fn store_error() {
    counter!("hookline_store_errors_total").increment(1);
}

/// A provider webhook operation (`operation` of [`HOOK_OPERATIONS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookOperation {
    Create,
    Delete,
    Repair,
}

/// A provider webhook created, deleted or repaired (`ok`), or not.
pub fn hook_operation(operation: HookOperation, ok: bool) {
    let c = match (operation, ok) {
        (HookOperation::Create, true) => {
            counter!("hookline_hook_operations_total", "operation" => "create", "outcome" => "ok")
        }
        (HookOperation::Create, false) => {
            counter!("hookline_hook_operations_total", "operation" => "create", "outcome" => "failed")
        }
        (HookOperation::Delete, true) => {
            counter!("hookline_hook_operations_total", "operation" => "delete", "outcome" => "ok")
        }
        (HookOperation::Delete, false) => {
            counter!("hookline_hook_operations_total", "operation" => "delete", "outcome" => "failed")
        }
        (HookOperation::Repair, true) => {
            counter!("hookline_hook_operations_total", "operation" => "repair", "outcome" => "ok")
        }
        (HookOperation::Repair, false) => {
            counter!("hookline_hook_operations_total", "operation" => "repair", "outcome" => "failed")
        }
    };
    c.increment(1);
}

/// An incident opened by a failed run.
pub fn incident_opened() {
    counter!("hookline_incidents_total", "action" => "opened").increment(1);
}

/// An incident resolved by a later successful run.
pub fn incident_resolved() {
    counter!("hookline_incidents_total", "action" => "resolved").increment(1);
}

/// How an outbound attempt ended (`outcome` of [`OUTBOUND_ATTEMPTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx.
    Delivered,
    /// Another status, or no answer for another reason than the two below.
    Failed,
    /// No answer within `OUTBOUND_TIMEOUT`.
    Timeout,
    /// The SSRF policy refused the address: nothing was sent.
    Refused,
}

/// One outbound HTTP attempt, and how long it took.
pub fn outbound_attempt(outcome: AttemptOutcome, took: Duration) {
    let c = match outcome {
        AttemptOutcome::Delivered => {
            counter!("hookline_outbound_attempts_total", "outcome" => "delivered")
        }
        AttemptOutcome::Failed => {
            counter!("hookline_outbound_attempts_total", "outcome" => "failed")
        }
        AttemptOutcome::Timeout => {
            counter!("hookline_outbound_attempts_total", "outcome" => "timeout")
        }
        AttemptOutcome::Refused => {
            counter!("hookline_outbound_attempts_total", "outcome" => "refused")
        }
    };
    c.increment(1);
    histogram!("hookline_outbound_attempt_seconds").record(took.as_secs_f64());
}

/// An outbound delivery given up on.
pub fn outbound_dead_lettered() {
    counter!("hookline_outbound_dead_lettered_total").increment(1);
}

/// An endpoint Hookline disabled.
pub fn endpoint_disabled() {
    counter!("hookline_endpoints_disabled_total").increment(1);
}

/// A Stripe event applied to an org's billing; its family is its type without the last part
/// (`invoice.paid` → `invoice`), from the fixed list of events Hookline handles.
pub fn stripe_event_applied(event_type: &str) {
    let family = event_type.rsplit_once('.').map_or("", |(family, _)| family);
    let c = match family {
        "checkout.session" => {
            counter!("hookline_stripe_events_applied_total", "type_family" => "checkout.session")
        }
        "customer.subscription" => {
            counter!("hookline_stripe_events_applied_total", "type_family" => "customer.subscription")
        }
        "invoice" => counter!("hookline_stripe_events_applied_total", "type_family" => "invoice"),
        "charge" => counter!("hookline_stripe_events_applied_total", "type_family" => "charge"),
        "charge.refund" => {
            counter!("hookline_stripe_events_applied_total", "type_family" => "charge.refund")
        }
        _ => counter!("hookline_stripe_events_applied_total", "type_family" => "other"),
    };
    c.increment(1);
}

/// A mail to an org's owner sent, or one that could not be.
pub fn mail(sent: bool) {
    if sent {
        counter!("hookline_mails_total", "outcome" => "sent").increment(1);
    } else {
        counter!("hookline_mails_total", "outcome" => "failed").increment(1);
    }
}

/// A local queue (`inbound` or `outbound`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalQueue {
    Inbound,
    Outbound,
}

/// How many messages a local queue holds, and how old (or overdue) the oldest is.
pub fn queue_backlog(queue: LocalQueue, depth: u64, oldest: Duration) {
    let (d, age) = match queue {
        LocalQueue::Inbound => (
            gauge!("hookline_queue_depth", "queue" => "inbound"),
            gauge!("hookline_queue_oldest_age_seconds", "queue" => "inbound"),
        ),
        LocalQueue::Outbound => (
            gauge!("hookline_queue_depth", "queue" => "outbound"),
            gauge!("hookline_queue_oldest_age_seconds", "queue" => "outbound"),
        ),
    };
    d.set(depth as f64);
    age.set(oldest.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Every series `record` makes, as `name{k=v,…}` and its value.
    fn recorded(record: impl FnOnce()) -> Vec<(String, DebugValue)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, record);
        let mut series: Vec<(String, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let labels: Vec<String> = key
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                (
                    format!("{}{{{}}}", key.key().name(), labels.join(",")),
                    value,
                )
            })
            .collect();
        series.sort_by(|a, b| a.0.cmp(&b.0));
        series
    }

    #[test]
    fn every_metric_is_recorded_under_its_contract_name_and_labels() {
        let series = recorded(|| {
            inbound(
                Source::Gitlab,
                InboundOutcome::InvalidSignature,
                Duration::ZERO,
            );
            processed(Duration::ZERO);
            store_error();
            hook_operation(HookOperation::Repair, false);
            incident_opened();
            incident_resolved();
            outbound_attempt(AttemptOutcome::Timeout, Duration::ZERO);
            outbound_dead_lettered();
            endpoint_disabled();
            stripe_event_applied("invoice.paid");
            mail(true);
            queue_backlog(LocalQueue::Outbound, 3, Duration::from_secs(2));
        });
        let names: Vec<&str> = series.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "hookline_endpoints_disabled_total{}",
                "hookline_hook_operations_total{operation=repair,outcome=failed}",
                "hookline_inbound_deliveries_total{source=gitlab,outcome=invalid_signature}",
                "hookline_incidents_total{action=opened}",
                "hookline_incidents_total{action=resolved}",
                "hookline_ingest_seconds{source=gitlab}",
                "hookline_mails_total{outcome=sent}",
                "hookline_outbound_attempt_seconds{}",
                "hookline_outbound_attempts_total{outcome=timeout}",
                "hookline_outbound_dead_lettered_total{}",
                "hookline_processing_seconds{}",
                "hookline_queue_depth{queue=outbound}",
                "hookline_queue_oldest_age_seconds{queue=outbound}",
                "hookline_signature_failures_total{}",
                "hookline_store_errors_total{}",
                "hookline_stripe_events_applied_total{type_family=invoice}",
            ]
        );
        // The names the literals spell are the names the contract constants give.
        let constants = [
            INBOUND_DELIVERIES,
            SIGNATURE_FAILURES,
            HOOK_OPERATIONS,
            STORE_ERRORS,
            INCIDENTS,
            OUTBOUND_ATTEMPTS,
            OUTBOUND_DEAD_LETTERED,
            ENDPOINTS_DISABLED,
            STRIPE_EVENTS_APPLIED,
            MAILS,
            INGEST_SECONDS,
            PROCESSING_SECONDS,
            OUTBOUND_ATTEMPT_SECONDS,
            QUEUE_DEPTH,
            QUEUE_OLDEST_AGE_SECONDS,
        ];
        for name in &names {
            let bare = name.split('{').next().unwrap();
            assert!(constants.contains(&bare), "{bare} is not a contract name");
        }
        for constant in constants {
            assert!(
                names
                    .iter()
                    .any(|n| n.starts_with(&format!("{constant}{{"))),
                "{constant} was never recorded"
            );
        }
    }

    #[test]
    fn every_stripe_event_hookline_handles_counts_under_a_family_of_its_own_name() {
        let series = recorded(|| {
            for t in crate::billing::stripe_events::HANDLED {
                stripe_event_applied(t);
            }
        });
        let families: Vec<(String, DebugValue)> = series;
        let counts: Vec<(&str, u64)> = families
            .iter()
            .map(|(name, value)| match value {
                DebugValue::Counter(n) => (name.as_str(), *n),
                other => panic!("{name}: not a counter: {other:?}"),
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                (
                    "hookline_stripe_events_applied_total{type_family=charge.refund}",
                    1
                ),
                (
                    "hookline_stripe_events_applied_total{type_family=charge}",
                    1
                ),
                (
                    "hookline_stripe_events_applied_total{type_family=checkout.session}",
                    1
                ),
                (
                    "hookline_stripe_events_applied_total{type_family=customer.subscription}",
                    3
                ),
                (
                    "hookline_stripe_events_applied_total{type_family=invoice}",
                    6
                ),
            ]
        );
    }
}
