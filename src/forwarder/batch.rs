//! One claimed batch, from contacts to settlement.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use super::{
    BatchEnd, Fate, LEASE, Shared,
    contacts::Wanted,
    isolate::{Named, Piece, isolate},
};
use crate::{
    hubspot::{CallError, CreateOutcome, Subscriber, named_inputs},
    record::{EventInfo, GroupKey, State, now_ms},
    retry,
    store::{ClaimedBatch, Settlement, StoredRecord},
};

/// Records with the contact id each is sent under.
type Sendable = (i64, StoredRecord);

/// The one retry delay of a batch: drawn when its first record has to wait.
pub(super) struct BatchDelay {
    /// When the batch's calls began.
    sent: Instant,
    drawn: Option<Duration>,
}

impl BatchDelay {
    pub(super) fn new() -> Self {
        Self {
            sent: Instant::now(),
            drawn: None,
        }
    }
}

/// The span a batch runs in, naming its group and lease on every line it
/// logs (its calls to HubSpot, its settlement); an event's completion
/// travels as a batch of its own.
pub(super) fn span(batch: &ClaimedBatch) -> tracing::Span {
    let group = &batch.group;
    let (account, event) = (&group.external_account_id, &group.external_event_id);
    if group.state == State::Complete {
        tracing::info_span!("completion", %account, %event, lease = %batch.lease)
    } else {
        let state = group.state.as_str();
        tracing::info_span!("batch", %account, %event, state, lease = %batch.lease)
    }
}

impl Shared {
    /// Sends the batch (renewing its lease while that takes) and settles it.
    pub(super) async fn forward(&self, batch: ClaimedBatch) -> BatchEnd {
        let records: Vec<i64> = batch.records.iter().map(|r| r.id).collect();
        // The requests that brought them, in the same order: the link from
        // the ingest line (`request_id`) to the record ids followed from here.
        let requests: Vec<&str> = batch
            .records
            .iter()
            .map(|r| r.request_id.as_deref().unwrap_or("-"))
            .collect();
        tracing::info!(?records, ?requests, "batch claimed");
        let lease = batch.lease.clone();
        let sending = self.send(batch);
        tokio::pin!(sending);
        let (settled, paused) = loop {
            tokio::select! {
                sent = &mut sending => break sent,
                () = tokio::time::sleep(LEASE / 3) => self.renew(&lease).await,
            }
        };
        self.settle(&lease, settled).await;
        paused.map_or(BatchEnd::Done, BatchEnd::Paused)
    }

    async fn renew(&self, lease: &str) {
        match self.store.renew(lease, LEASE).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("a batch's lease ran out while it was being sent"),
            Err(err) => tracing::warn!(error = %err, "cannot renew a batch's lease"),
        }
    }

    /// Every record's settlement, and the reason when forwarding must pause.
    async fn send(&self, batch: ClaimedBatch) -> (Vec<(StoredRecord, Settlement)>, Option<String>) {
        let ClaimedBatch { group, records, .. } = batch;
        if group.state == State::Complete {
            return self.complete(records).await;
        }
        // Before the contact look-up: a look-up failing together with other
        // batches' calls counts once towards the backoff, as a create does.
        let mut delay = BatchDelay::new();
        let wanted: Vec<Wanted> = records
            .iter()
            .filter(|r| r.record.vid.is_none())
            .map(|r| Wanted {
                email: &r.record.email,
                first_name: r.record.first_name.as_deref(),
                last_name: r.record.last_name.as_deref(),
            })
            .collect();
        let resolved = self
            .contacts
            .resolve(&self.hubspot, &wanted, self.config.create_contacts)
            .await;
        let mut resolved = match resolved {
            Ok(resolved) => resolved,
            Err(reason) => {
                let released = records.into_iter().map(|r| (r, Settlement::Release));
                return (released.collect(), Some(reason));
            }
        };

        let mut settled = Vec::with_capacity(records.len());
        let mut sendable: Vec<Sendable> = Vec::with_capacity(records.len());
        for stored in records {
            let vid = match stored.record.vid {
                Some(vid) => Ok(vid),
                // `get`, not `remove`: a re-join puts one contact in a batch twice.
                None => resolved
                    .get(&stored.record.email)
                    .cloned()
                    .unwrap_or_else(|| {
                        Err(Fate::Retry {
                            reason: "the contact look-up gave no answer for this email".into(),
                            retry_after: None,
                        })
                    }),
            };
            match vid {
                Ok(vid) => sendable.push((vid, stored)),
                Err(fate) => {
                    // Another record of the batch may share the email.
                    resolved.insert(stored.record.email.clone(), Err(fate.clone()));
                    let settlement = self.settlement(&stored, fate, &mut delay);
                    settled.push((stored, settlement));
                }
            }
        }

        let pieces = isolate(
            sendable,
            async |chunk: &[Sendable]| self.create(&group, chunk).await,
            named_creates,
        )
        .await;
        let mut paused = None;
        for Piece { items, answer } in pieces {
            match answer {
                Ok(outcome) => {
                    self.healthy().await;
                    settled.extend(self.settle_inputs(items, &outcome, &mut delay));
                }
                Err(CallError::Credential(reason)) => {
                    settled.extend(items.into_iter().map(|(_, r)| (r, Settlement::Release)));
                    paused = Some(reason);
                }
                Err(err) => {
                    let fate = match err {
                        CallError::Rejected {
                            status, message, ..
                        } => Fate::Dead(format!("HubSpot refused the input ({status}): {message}")),
                        other => Fate::from(other),
                    };
                    for (_, stored) in items {
                        let settlement = self.settlement(&stored, fate.clone(), &mut delay);
                        settled.push((stored, settlement));
                    }
                }
            }
        }
        (settled, paused)
    }

    /// Settles the inputs of a `create` HubSpot answered 2xx, each on its own.
    fn settle_inputs(
        &self,
        items: Vec<Sendable>,
        outcome: &CreateOutcome,
        delay: &mut BatchDelay,
    ) -> Vec<(StoredRecord, Settlement)> {
        let clean = outcome.failed.is_empty() && !outcome.unattributed_errors;
        items
            .into_iter()
            .map(|(vid, stored)| {
                let settlement = match outcome.failed.get(&vid) {
                    Some(message) => self.refused_input(&stored, vid, message),
                    None if clean || outcome.done.contains(&vid) => Settlement::Delivered,
                    None => {
                        let fate = Fate::Retry {
                            reason: "HubSpot reported errors without saying for which input".into(),
                            retry_after: None,
                        };
                        self.settlement(&stored, fate, delay)
                    }
                };
                (stored, settlement)
            })
            .collect()
    }

    /// One `create` call, for an event HubSpot may not know yet.
    async fn create(
        &self,
        group: &GroupKey,
        chunk: &[Sendable],
    ) -> Result<CreateOutcome, CallError> {
        let (account, event) = (&group.external_account_id, &group.external_event_id);
        let (_, first) = chunk.first().expect("a piece is never empty");
        let info = chunk
            .iter()
            .find_map(|(_, stored)| stored.record.event.clone())
            .unwrap_or_default();
        let call = async || self.create_once(group, chunk).await;
        self.for_event(account, event, &info, &first.source, call)
            .await
    }

    /// A call about one event; a 404 for the event creates it (once for all
    /// groups of the event) from `info` when allowed, then calls again.
    pub(super) async fn for_event<T>(
        &self,
        account: &str,
        event: &str,
        info: &EventInfo,
        source: &str,
        call: impl AsyncFn() -> Result<T, CallError>,
    ) -> Result<T, CallError> {
        match call().await {
            Err(CallError::Rejected {
                status: 404,
                message,
                ..
            }) => {
                self.ensure_event(account, event, info, source, &message)
                    .await?;
                call().await.map_err(|err| match err {
                    CallError::Rejected { status: 404, .. } => CallError::Transient {
                        reason: format!(
                            "HubSpot still has no marketing event {event} after creating it ({message})"
                        ),
                        retry_after: None,
                    },
                    other => other,
                })
            }
            other => other,
        }
    }

    async fn create_once(
        &self,
        group: &GroupKey,
        chunk: &[Sendable],
    ) -> Result<CreateOutcome, CallError> {
        let inputs: Vec<Subscriber> = chunk
            .iter()
            .map(|(vid, stored)| Subscriber {
                vid: *vid,
                interaction_ms: stored.record.interaction_ms,
                properties: &stored.record.properties,
            })
            .collect();
        self.metrics.hubspot_batch_size.observe(inputs.len() as f64);
        self.hubspot
            .create_attendance(
                &group.external_account_id,
                &group.external_event_id,
                group.state,
                &inputs,
            )
            .await
    }

    /// HubSpot does not know the event: create it from what the platform
    /// told us, unless that is switched off (then the refusal stands).
    async fn ensure_event(
        &self,
        account: &str,
        event: &str,
        info: &EventInfo,
        source: &str,
        message: &str,
    ) -> Result<(), CallError> {
        if !self.config.upsert_events {
            return Err(CallError::Rejected {
                status: 404,
                message: format!(
                    "HubSpot has no marketing event {event} for account {account} and \
                     RELAY_UPSERT_EVENTS=false ({message})"
                ),
                body: serde_json::Value::Null,
            });
        }
        let once = self
            .events
            .borrow_mut()
            .entry((account.to_owned(), event.to_owned()))
            .or_default()
            .clone();
        let mut created = once.lock().await;
        if *created {
            return Ok(());
        }
        self.hubspot
            .upsert_event(account, event, &organizer_name(source), info)
            .await?;
        *created = true;
        tracing::info!(%account, %event, "created the marketing event in HubSpot");
        Ok(())
    }

    /// HubSpot refused one input of a batch. A contact id from our cache may
    /// be stale (merged or deleted contact): look it up again once.
    fn refused_input(&self, stored: &StoredRecord, vid: i64, message: &str) -> Settlement {
        if stored.record.vid.is_none() && stored.attempts <= 1 {
            self.contacts.forget(vid);
            return Settlement::Retry {
                delay: Duration::ZERO,
                error: format!("HubSpot refused contact {vid}: {message}; looking it up again"),
            };
        }
        Settlement::Dead {
            reason: format!("HubSpot refused the input: {message}"),
        }
    }

    pub(super) fn settlement(
        &self,
        stored: &StoredRecord,
        fate: Fate,
        delay: &mut BatchDelay,
    ) -> Settlement {
        match fate {
            Fate::Dead(reason) => Settlement::Dead { reason },
            Fate::Paused(_) => Settlement::Release,
            Fate::Retry {
                reason,
                retry_after,
            } => {
                let too_old = retry::give_up(
                    now_ms(),
                    stored.created_ms,
                    self.config.max_record_age,
                    &reason,
                );
                match too_old {
                    Some(reason) => Settlement::Dead { reason },
                    None => Settlement::Retry {
                        delay: self.batch_delay(delay, retry_after),
                        error: reason,
                    },
                }
            }
        }
    }

    /// When HubSpot said when to come back (`Retry-After`, or a 429's
    /// pause), then; otherwise the first retry of a batch counts a failure
    /// in a row and draws the delay every record of the batch then waits.
    fn batch_delay(&self, delay: &mut BatchDelay, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after;
        }
        *delay.drawn.get_or_insert_with(|| {
            let failures = self.health.failed(delay.sent);
            retry::backoff(failures)
        })
    }

    /// A call succeeded: if calls were failing, what waits out a backoff is
    /// due now.
    pub(super) async fn healthy(&self) {
        if !self.health.recovered() {
            return;
        }
        match self.store.expedite_retries().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(records = n, "HubSpot answers again: retrying now");
                self.wake.notify_one();
            }
            Err(err) => tracing::warn!(error = %err, "cannot bring retries forward"),
        }
    }

    async fn settle(&self, lease: &str, settled: Vec<(StoredRecord, Settlement)>) {
        if settled.is_empty() {
            return;
        }
        let mut counts: HashMap<(State, &str), u64> = HashMap::new();
        let mut outcomes = Vec::with_capacity(settled.len());
        for (stored, settlement) in settled {
            let outcome = match &settlement {
                Settlement::Delivered => Some("delivered"),
                Settlement::Dead { reason } => {
                    tracing::warn!(record = stored.id, %reason, "dead letter");
                    Some("dead_lettered")
                }
                Settlement::Retry { .. } | Settlement::Release => None,
            };
            if let Some(outcome) = outcome {
                *counts.entry((stored.record.state, outcome)).or_default() += 1;
            }
            outcomes.push((stored.id, settlement));
        }
        let expected = outcomes.len();
        // Record ids, each found by `grep`.
        let of = |wanted: fn(&Settlement) -> bool| -> Vec<i64> {
            let chosen = outcomes.iter().filter(|(_, settlement)| wanted(settlement));
            chosen.map(|(id, _)| *id).collect()
        };
        tracing::info!(
            delivered = ?of(|s| matches!(s, Settlement::Delivered)),
            dead = ?of(|s| matches!(s, Settlement::Dead { .. })),
            retried = ?of(|s| matches!(s, Settlement::Retry { .. })),
            released = ?of(|s| matches!(s, Settlement::Release)),
            "batch settled"
        );
        match self.store.settle(lease, outcomes).await {
            Ok(changed) if changed == expected => {}
            Ok(changed) => tracing::warn!(
                changed,
                expected,
                "part of a batch was taken over by another forwarder before it settled"
            ),
            Err(err) => {
                // The lease runs out and the batch is sent again.
                tracing::error!(error = %err, "cannot settle a batch; it will be sent again");
                return;
            }
        }
        for ((state, outcome), n) in counts {
            self.metrics
                .records
                .with_label_values(&[state.as_str(), outcome])
                .inc_by(n);
        }
    }
}

/// Which inputs of a refused `create` HubSpot named; a 404 (no such event)
/// refuses the whole request.
fn named_creates(status: u16, body: &serde_json::Value, chunk: &[Sendable]) -> Named {
    if status == 404 {
        return Named::All;
    }
    let vids: Vec<String> = chunk.iter().map(|(vid, _)| vid.to_string()).collect();
    Named::Inputs(named_inputs(body, &vids))
}

/// `zoom` → `Zoom`: the marketing event's organizer is the platform.
fn organizer_name(source: &str) -> String {
    let mut chars = source.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_organizer_is_the_platform() {
        assert_eq!(organizer_name("zoom"), "Zoom");
        assert_eq!(organizer_name(""), "");
    }
}
