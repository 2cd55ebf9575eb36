//! A completion: HubSpot is told the event is over, so it computes each
//! attendee's duration from the sessions it was sent. The store hands one out
//! only once the attendance it covers is settled and its grace has passed.

use super::{Fate, Shared, batch::BatchDelay};
use crate::{
    hubspot::CallError,
    store::{Settlement, StoredRecord},
};

impl Shared {
    /// Completes the events of claimed completions: their settlements, and
    /// the reason when forwarding must pause.
    pub(super) async fn complete(
        &self,
        completions: Vec<StoredRecord>,
    ) -> (Vec<(StoredRecord, Settlement)>, Option<String>) {
        let mut delay = BatchDelay::new();
        let mut settled = Vec::with_capacity(completions.len());
        let mut paused = None;
        for stored in completions {
            let record = &stored.record;
            let time = |name: &str| record.properties.get(name).map_or("", String::as_str);
            let call = async || {
                self.hubspot
                    .complete_event(
                        &record.external_account_id,
                        &record.external_event_id,
                        time("startDateTime"),
                        time("endDateTime"),
                    )
                    .await
            };
            let info = record.event.clone().unwrap_or_default();
            let answer = self
                .for_event(
                    &record.external_account_id,
                    &record.external_event_id,
                    &info,
                    &stored.source,
                    call,
                )
                .await;
            let settlement = match answer {
                Ok(()) => {
                    self.healthy().await;
                    tracing::info!(
                        account = %record.external_account_id,
                        event = %record.external_event_id,
                        "completed the marketing event"
                    );
                    Settlement::Delivered
                }
                Err(CallError::Credential(reason)) => {
                    paused = Some(reason);
                    Settlement::Release
                }
                Err(err) => self.settlement(&stored, Fate::from(err), &mut delay),
            };
            settled.push((stored, settlement));
        }
        (settled, paused)
    }
}
