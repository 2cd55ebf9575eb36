//! The forwarder: takes due records from the store, groups them per
//! (account, event, state), resolves their contacts, sends them to HubSpot's
//! attendance `create` in batches, and settles every record — delivered,
//! retried later, or dead with its reason. Nothing is settled before HubSpot
//! answered, so a crash mid-call means the record is sent again (HubSpot's
//! create is idempotent for the same contact and interaction time).

mod contacts;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use futures_util::future::join_all;
use tokio::sync::Notify;

use crate::{
    hubspot::{CallError, CreateOutcome, HubSpotClient, Subscriber, named_inputs},
    metrics::Metrics,
    record::{State, now_ms},
    retry::next_attempt,
    store::{Settlement, Store, StoreError, StoredRecord},
};
use contacts::{Contacts, Wanted};

/// Records one round reads, in batches' worth.
const ROUND_BATCHES: i64 = 10;
/// How long a taken record stays with this forwarder before another may take it.
const LEASE: Duration = Duration::from_secs(300);
/// Retries and other replicas' records come due without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);
const PAUSE_FIRST: Duration = Duration::from_secs(2);
const PAUSE_MAX: Duration = Duration::from_secs(300);
/// Wait after the store failed a forwarding read or write.
const STORE_RETRY: Duration = Duration::from_secs(1);

pub struct Config {
    pub batch_size: usize,
    pub linger: Duration,
    pub max_record_age: Duration,
    pub create_contacts: bool,
    pub upsert_events: bool,
}

/// What is to become of records that did not get through.
#[derive(Clone, Debug)]
pub enum Fate {
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    Dead(String),
    /// The credential does not work: stop forwarding until it does.
    Paused(String),
}

impl From<CallError> for Fate {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Transient {
                reason,
                retry_after,
            } => Fate::Retry {
                reason,
                retry_after,
            },
            CallError::Credential(reason) => Fate::Paused(reason),
            // A refused look-up is not the record's fault; try again later.
            CallError::Rejected { .. } => Fate::Retry {
                reason: err.to_string(),
                retry_after: None,
            },
        }
    }
}

enum Round {
    /// Sent what was ready; more may be due at once.
    Busy,
    /// Nothing ready; a partial batch is lingering until the given time (ms).
    Idle(Option<i64>),
}

enum Stall {
    Paused(String),
    Store(StoreError),
}

impl From<StoreError> for Stall {
    fn from(err: StoreError) -> Self {
        Stall::Store(err)
    }
}

/// Records of one `create` path: same account, event and state.
type GroupKey = (String, String, State);
/// Records with the contact id each is sent under.
type Batch = Vec<(i64, StoredRecord)>;

pub struct Forwarder {
    store: Arc<dyn Store>,
    hubspot: HubSpotClient,
    contacts: Contacts,
    config: Config,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Forwarder {
    pub fn new(
        store: Arc<dyn Store>,
        hubspot: HubSpotClient,
        config: Config,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            hubspot,
            contacts: Contacts::default(),
            config: Config {
                batch_size: config.batch_size.max(1),
                ..config
            },
            metrics,
            wake,
        }
    }

    /// Forwards until the task is dropped.
    pub async fn run(self) {
        let mut pause = PAUSE_FIRST;
        let mut paused_for: Option<String> = None;
        loop {
            let wait = match self.round().await {
                Ok(round) => {
                    if paused_for.take().is_some() {
                        tracing::info!("forwarding resumed");
                        self.metrics.forwarding_paused.set(0);
                    }
                    pause = PAUSE_FIRST;
                    match round {
                        Round::Busy => continue,
                        Round::Idle(Some(ready_at)) => {
                            let ms = u64::try_from(ready_at - now_ms()).unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            continue;
                        }
                        Round::Idle(None) => IDLE_POLL,
                    }
                }
                Err(Stall::Paused(reason)) => {
                    if paused_for.as_ref() != Some(&reason) {
                        tracing::warn!(%reason, retry_in = ?pause, "forwarding paused: records are kept");
                        self.metrics.forwarding_paused.set(1);
                        paused_for = Some(reason);
                    }
                    let wait = pause;
                    pause = (pause * 2).min(PAUSE_MAX);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(Stall::Store(err)) => {
                    tracing::error!(error = %err, "forwarding cannot use the store");
                    STORE_RETRY
                }
            };
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn round(&self) -> Result<Round, Stall> {
        let now = now_ms();
        let limit = self.config.batch_size as i64 * ROUND_BATCHES;
        let mut groups: BTreeMap<GroupKey, Vec<StoredRecord>> = BTreeMap::new();
        for stored in self.store.due(now, limit).await? {
            let r = &stored.record;
            let key = (
                r.external_account_id.clone(),
                r.external_event_id.clone(),
                r.state,
            );
            groups.entry(key).or_default().push(stored);
        }
        if groups.is_empty() {
            return Ok(Round::Idle(None));
        }
        // A batch goes when it is full or its oldest record has lingered long enough.
        let linger = self.config.linger.as_millis() as i64;
        let ready_at = |records: &[StoredRecord]| {
            records
                .iter()
                .map(|r| r.next_attempt_ms)
                .min()
                .unwrap_or(now)
                + linger
        };
        let (ready, waiting): (Vec<_>, Vec<_>) = groups.into_iter().partition(|(_, records)| {
            records.len() >= self.config.batch_size || ready_at(records) <= now
        });
        if ready.is_empty() {
            let next = waiting.iter().map(|(_, records)| ready_at(records)).min();
            return Ok(Round::Idle(next));
        }

        let ids: Vec<i64> = ready
            .iter()
            .flat_map(|(_, rs)| rs.iter().map(|r| r.id))
            .collect();
        let lease_until = now + LEASE.as_millis() as i64;
        let claimed: HashSet<i64> = self
            .store
            .claim(&ids, now, lease_until)
            .await?
            .into_iter()
            .collect();
        let ready: Vec<(GroupKey, Vec<StoredRecord>)> = ready
            .into_iter()
            .map(|(key, records)| {
                let taken = records
                    .into_iter()
                    .filter(|r| claimed.contains(&r.id))
                    .map(|r| StoredRecord {
                        attempts: r.attempts + 1,
                        ..r
                    })
                    .collect();
                (key, taken)
            })
            .collect();

        let mut settled: Vec<(StoredRecord, Settlement)> = Vec::new();
        let result = self.forward(ready, &mut settled).await;
        self.settle(settled).await?;
        result.map(|()| Round::Busy)
    }

    /// Resolves contacts, then sends every batch; each taken record ends up
    /// in `settled` exactly once, whatever happens.
    async fn forward(
        &self,
        ready: Vec<(GroupKey, Vec<StoredRecord>)>,
        settled: &mut Vec<(StoredRecord, Settlement)>,
    ) -> Result<(), Stall> {
        let wanted: Vec<Wanted> = ready
            .iter()
            .flat_map(|(_, records)| records)
            .filter(|r| r.record.vid.is_none())
            .map(|r| Wanted {
                email: &r.record.email,
                first_name: r.record.first_name.as_deref(),
                last_name: r.record.last_name.as_deref(),
            })
            .collect();
        let resolved = match self
            .contacts
            .resolve(&self.hubspot, &wanted, self.config.create_contacts)
            .await
        {
            Ok(resolved) => resolved,
            Err(reason) => {
                settled.extend(
                    ready
                        .into_iter()
                        .flat_map(|(_, rs)| rs)
                        .map(|r| (r, Settlement::Release)),
                );
                return Err(Stall::Paused(reason));
            }
        };

        let now = now_ms();
        let mut batches = Vec::new();
        for (key, records) in ready {
            let mut sendable = Vec::new();
            for stored in records {
                let vid = match stored.record.vid {
                    Some(vid) => Ok(vid),
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
                        let settlement = self.settlement(&stored, fate, now);
                        settled.push((stored, settlement));
                    }
                }
            }
            let mut rest = sendable.into_iter().peekable();
            while rest.peek().is_some() {
                let batch: Vec<_> = rest.by_ref().take(self.config.batch_size).collect();
                batches.push(self.send(key.clone(), batch));
            }
        }
        let mut paused = None;
        for (outcomes, reason) in join_all(batches).await {
            settled.extend(outcomes);
            paused = paused.or(reason);
        }
        paused.map_or(Ok(()), |reason| Err(Stall::Paused(reason)))
    }

    /// Sends one batch, splitting it when HubSpot refuses it as a whole, and
    /// creating the marketing event once when HubSpot does not know it.
    /// Returns every record's settlement, and the reason when forwarding must pause.
    async fn send(
        &self,
        key: GroupKey,
        batch: Batch,
    ) -> (Vec<(StoredRecord, Settlement)>, Option<String>) {
        let key = &key;
        let mut settled = Vec::new();
        let mut event_created = false;
        let mut queue = vec![batch];
        while let Some(batch) = queue.pop() {
            let answer = self.create(key, &batch).await;
            let now = now_ms();
            let fate = match answer {
                Ok(outcome) => {
                    let clean = outcome.failed.is_empty() && !outcome.unattributed_errors;
                    for (vid, stored) in batch {
                        let settlement = match outcome.failed.get(&vid) {
                            Some(message) => self.refused_input(&stored, vid, message, now),
                            None if clean || outcome.done.contains(&vid) => Settlement::Delivered,
                            None => self.settlement(&stored, unattributed(), now),
                        };
                        settled.push((stored, settlement));
                    }
                    continue;
                }
                Err(CallError::Rejected {
                    status: 404,
                    message,
                    ..
                }) => {
                    match self
                        .missing_event(key, &batch, &message, event_created)
                        .await
                    {
                        Ok(()) => {
                            event_created = true;
                            queue.push(batch);
                            continue;
                        }
                        Err(fate) => fate,
                    }
                }
                Err(CallError::Rejected {
                    status,
                    message,
                    body,
                }) => {
                    let (refused, rest) = isolate(batch, &body);
                    let reason = format!("HubSpot refused the input ({status}): {message}");
                    settled.extend(refused.into_iter().map(|(_, stored)| {
                        (
                            stored,
                            Settlement::Dead {
                                reason: reason.clone(),
                            },
                        )
                    }));
                    queue.extend(rest.into_iter().filter(|part| !part.is_empty()));
                    continue;
                }
                Err(err) => Fate::from(err),
            };
            if let Fate::Paused(reason) = fate {
                let untouched = queue.into_iter().flatten().chain(batch);
                settled.extend(untouched.map(|(_, stored)| (stored, Settlement::Release)));
                return (settled, Some(reason));
            }
            for (_, stored) in batch {
                let settlement = self.settlement(&stored, fate.clone(), now);
                settled.push((stored, settlement));
            }
        }
        (settled, None)
    }

    async fn create(
        &self,
        (account, event, state): &GroupKey,
        batch: &[(i64, StoredRecord)],
    ) -> Result<CreateOutcome, CallError> {
        let inputs: Vec<Subscriber> = batch
            .iter()
            .map(|(vid, stored)| Subscriber {
                vid: *vid,
                interaction_ms: stored.record.interaction_ms,
                properties: &stored.record.properties,
            })
            .collect();
        self.metrics.hubspot_batch_size.observe(inputs.len() as f64);
        self.hubspot
            .create_attendance(account, event, *state, &inputs)
            .await
    }

    /// HubSpot does not know the event: create it once from what the platform
    /// told us (`Ok`: send again), or say what becomes of the batch.
    async fn missing_event(
        &self,
        (account, event, _): &GroupKey,
        batch: &[(i64, StoredRecord)],
        message: &str,
        already_created: bool,
    ) -> Result<(), Fate> {
        if !self.config.upsert_events {
            return Err(Fate::Dead(format!(
                "HubSpot has no marketing event {event} for account {account} and \
                 RELAY_UPSERT_EVENTS=false ({message})"
            )));
        }
        if already_created {
            return Err(Fate::Retry {
                reason: format!(
                    "HubSpot still has no marketing event {event} after creating it ({message})"
                ),
                retry_after: None,
            });
        }
        let first = batch.first().map(|(_, stored)| stored);
        let info = batch
            .iter()
            .find_map(|(_, stored)| stored.record.event.clone())
            .unwrap_or_default();
        let organizer = first.map_or("attendance-relay", |stored| stored.source.as_str());
        self.hubspot
            .upsert_event(account, event, &organizer_name(organizer), &info)
            .await
            .map_err(Fate::from)?;
        tracing::info!(%account, %event, "created the marketing event in HubSpot");
        Ok(())
    }

    /// HubSpot refused one input of a batch. A contact id from our cache may
    /// be stale (merged or deleted contact): look it up again once.
    fn refused_input(
        &self,
        stored: &StoredRecord,
        vid: i64,
        message: &str,
        now: i64,
    ) -> Settlement {
        if stored.record.vid.is_none() && stored.attempts <= 1 {
            self.contacts.forget(vid);
            return Settlement::Retry {
                at_ms: now,
                error: format!("HubSpot refused contact {vid}: {message}; looking it up again"),
            };
        }
        Settlement::Dead {
            reason: format!("HubSpot refused the input: {message}"),
        }
    }

    fn settlement(&self, stored: &StoredRecord, fate: Fate, now: i64) -> Settlement {
        match fate {
            Fate::Dead(reason) => Settlement::Dead { reason },
            Fate::Paused(_) => Settlement::Release,
            Fate::Retry {
                reason,
                retry_after,
            } => match next_attempt(
                now,
                stored.created_ms,
                stored.attempts,
                retry_after,
                self.config.max_record_age,
                &reason,
            ) {
                Ok(at_ms) => Settlement::Retry {
                    at_ms,
                    error: reason,
                },
                Err(reason) => Settlement::Dead { reason },
            },
        }
    }

    async fn settle(&self, settled: Vec<(StoredRecord, Settlement)>) -> Result<(), StoreError> {
        if settled.is_empty() {
            return Ok(());
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
        self.store.settle(outcomes).await?;
        for ((state, outcome), n) in counts {
            self.metrics
                .records
                .with_label_values(&[state.as_str(), outcome])
                .inc_by(n);
        }
        Ok(())
    }
}

fn unattributed() -> Fate {
    Fate::Retry {
        reason: "HubSpot reported errors without saying for which input".into(),
        retry_after: None,
    }
}

/// Splits a batch HubSpot refused as a whole: the inputs it names (or the
/// only input) are refused; otherwise halves to send separately.
fn isolate(batch: Batch, error: &serde_json::Value) -> (Batch, [Batch; 2]) {
    let vids: Vec<i64> = batch.iter().map(|(vid, _)| *vid).collect();
    let named = named_inputs(error, &vids);
    if batch.len() == 1 {
        return (batch, [Vec::new(), Vec::new()]);
    }
    if !named.is_empty() && named.len() < batch.len() {
        let (refused, rest) = batch.into_iter().partition(|(vid, _)| named.contains(vid));
        return (refused, [rest, Vec::new()]);
    }
    let mut left = batch;
    let right = left.split_off(left.len() / 2);
    (Vec::new(), [left, right])
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
