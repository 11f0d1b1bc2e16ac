//! The seam between the parts of Hookline that cause its own events (the worker's incidents and
//! relayed provider deliveries, the connections service) and the org's outbound stream that
//! takes them. Every such event carries an id derived from its cause, so redoing work publishes
//! nothing new.

use crate::outbound::model::{EventData, EventId};

/// Where Hookline's own events go: the org's outbound stream (outbound::publish::Publisher).
#[async_trait::async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Publish `event_type` with `data` into the org's stream under `id`; publishing an id the
    /// org already has is a no-op success (so redoing the work that caused it publishes nothing new).
    async fn publish_own(
        &self,
        org_id: &str,
        event_type: &str,
        id: EventId,
        data: EventData,
    ) -> Result<(), String>;
}

/// A sink that records what it is given, for the tests of the code that publishes (the real
/// publisher is tested end to end with the outbound stream).
#[cfg(test)]
#[derive(Default)]
pub(crate) struct RecordingSink {
    pub published: std::sync::Mutex<Vec<Published>>,
    /// While set, every publish fails (and records nothing).
    pub failing: std::sync::atomic::AtomicBool,
}

#[cfg(test)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Published {
    pub org_id: String,
    pub event_type: String,
    pub id: EventId,
    pub data: serde_json::Value,
}

#[cfg(test)]
impl RecordingSink {
    /// Every publish of `event_type`, in order.
    pub fn of_type(&self, event_type: &str) -> Vec<Published> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.event_type == event_type)
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Published> {
        self.published.lock().unwrap().clone()
    }
}

#[cfg(test)]
#[async_trait::async_trait]
impl EventSink for RecordingSink {
    async fn publish_own(
        &self,
        org_id: &str,
        event_type: &str,
        id: EventId,
        data: EventData,
    ) -> Result<(), String> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("the outbound stream is unavailable".into());
        }
        self.published.lock().unwrap().push(Published {
            org_id: org_id.to_owned(),
            event_type: event_type.to_owned(),
            id,
            data: data.to_value(),
        });
        Ok(())
    }
}
