//! The forwarder: claims ready batches from the store — whole groups of
//! (account, event, state), so a batch travels full — and sends each as its
//! own task: contacts resolved, HubSpot's attendance `create` called, every
//! record settled (delivered, retried later, or dead with its reason). A slow
//! or failing group never holds up another. Nothing is settled before HubSpot
//! answered, so a crash mid-call means the batch is sent again once its lease
//! runs out (HubSpot's create is idempotent for the same contact and time).
//!
//! When an event ends, its completion travels the same way as a batch of
//! its own, once the store says the attendance before it is settled.
//!
//! Retry timing belongs to the batch and follows HubSpot's health: a failed
//! batch gets one next-attempt time, drawn from how many calls in a row have
//! failed, and when calls succeed again every record waiting out a backoff is
//! due at once.

mod batch;
mod complete;
mod contacts;
mod isolate;

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use tokio::{sync::Notify, time::Instant};

use crate::{
    hubspot::{CallError, HubSpotClient},
    metrics::Metrics,
    store::{ClaimRequest, ClaimedBatch, CompletionClaim, Queue},
};
use contacts::Contacts;

/// Batches sent at once; the rate limiter paces them, this bounds what a
/// hanging HubSpot can hold.
const MAX_IN_FLIGHT: usize = 8;
/// How long a claimed batch stays with this forwarder unless renewed (every
/// third of it while the batch is at work): a forwarder that dies leaves its
/// batches to others after at most this long.
const LEASE: Duration = Duration::from_secs(15);
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
    /// Wait after an event's end for late leaves before completing it.
    pub complete_delay: Duration,
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
            CallError::Rejected { .. } => Fate::Dead(err.to_string()),
        }
    }
}

impl Shared {
    /// Completions that are due, at most `max`.
    async fn completions(&self, max: usize) -> Vec<ClaimedBatch> {
        let request = CompletionClaim {
            max,
            grace: self.config.complete_delay,
            lease: LEASE,
        };
        self.store
            .claim_completions(&request)
            .await
            .unwrap_or_else(|err| {
                tracing::error!(error = %err, "forwarding cannot use the store");
                Vec::new()
            })
    }
}

/// How a batch's task ended.
enum BatchEnd {
    Done,
    /// The credential was refused; its records were released.
    Paused(String),
}

/// Calls in a row that failed transiently, across all batches: the pace of
/// retrying follows HubSpot's health, not each record's history. Batches
/// that were in flight together and failed together count once, so the
/// backoff grows with the length of an outage, not with the concurrency.
#[derive(Default)]
struct Health {
    failures: Cell<i64>,
    last_failure: Cell<Option<Instant>>,
}

impl Health {
    /// A batch sent at `sent` failed: the failures in a row now.
    fn failed(&self, sent: Instant) -> i64 {
        let together = self.last_failure.get().is_some_and(|at| at > sent);
        if !together {
            self.failures.set(self.failures.get() + 1);
        }
        self.last_failure.set(Some(Instant::now()));
        self.failures.get()
    }

    /// A call succeeded; whether calls had been failing.
    fn recovered(&self) -> bool {
        self.last_failure.set(None);
        self.failures.replace(0) != 0
    }
}

/// Held while one marketing event is being created; true once it exists.
type EventCreated = Rc<tokio::sync::Mutex<bool>>;

/// What every batch task shares.
struct Shared {
    store: Arc<dyn Queue>,
    hubspot: HubSpotClient,
    contacts: Contacts,
    config: Config,
    metrics: Arc<Metrics>,
    health: Health,
    /// Marketing events created (or being created) by this process, so two
    /// groups of one unknown event create it once.
    events: RefCell<HashMap<(String, String), EventCreated>>,
    wake: Arc<Notify>,
}

pub struct Forwarder {
    shared: Rc<Shared>,
}

impl Forwarder {
    pub fn new(
        store: Arc<dyn Queue>,
        hubspot: HubSpotClient,
        config: Config,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            shared: Rc::new(Shared {
                store,
                hubspot,
                contacts: Contacts::default(),
                config: Config {
                    batch_size: config.batch_size.max(1),
                    ..config
                },
                metrics,
                health: Health::default(),
                events: RefCell::default(),
                wake,
            }),
        }
    }

    /// Forwards until `stop` resolves, then lets the batches in flight
    /// finish and settle before returning, so a restart finds their records
    /// settled rather than leased to a process that is gone (they would wait
    /// out the lease and then travel apart from their group).
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let shared = self.shared;
        let mut in_flight = FuturesUnordered::new();
        let mut paused: Option<(String, Duration, tokio::time::Instant)> = None;
        loop {
            let now = tokio::time::Instant::now();
            // While paused, one batch at a time probes whether the credential works again.
            let room = match &paused {
                None => MAX_IN_FLIGHT - in_flight.len(),
                Some((_, _, probe_at)) if *probe_at <= now && in_flight.is_empty() => 1,
                Some(_) => 0,
            };
            let mut wait = IDLE_POLL;
            if room > 0 {
                let request = ClaimRequest {
                    max_batches: room,
                    batch_size: shared.config.batch_size,
                    linger: shared.config.linger,
                    lease: LEASE,
                };
                match shared.store.claim(&request).await {
                    Ok(claimed) => {
                        let mut batches = claimed.batches;
                        if batches.len() < room {
                            batches.extend(shared.completions(room - batches.len()).await);
                        }
                        let taken = batches.len();
                        for batch in batches {
                            let shared = Rc::clone(&shared);
                            in_flight.push(actix_web::rt::spawn(async move {
                                shared.forward(batch).await
                            }));
                        }
                        wait = claimed.next_ready_in.unwrap_or(IDLE_POLL).min(IDLE_POLL);
                        if taken > 0 && taken < room && wait.is_zero() {
                            continue;
                        }
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "forwarding cannot use the store");
                        wait = STORE_RETRY;
                    }
                }
            } else if let Some((_, _, probe_at)) = &paused {
                wait = probe_at.saturating_duration_since(now).min(IDLE_POLL);
            }
            // New records only matter when nothing is pending: otherwise the
            // claim above already said when the next batch is ready.
            let idle = wait == IDLE_POLL && in_flight.is_empty() && paused.is_none();
            tokio::select! {
                Some(ended) = in_flight.next(), if !in_flight.is_empty() => {
                    match ended {
                        Ok(BatchEnd::Done) => {
                            if paused.take().is_some() {
                                tracing::info!("forwarding resumed");
                                shared.metrics.set_forwarding_paused(None);
                            }
                        }
                        Ok(BatchEnd::Paused(reason)) => {
                            let backoff = match &paused {
                                Some((_, last, _)) => (*last * 2).min(PAUSE_MAX),
                                None => PAUSE_FIRST,
                            };
                            if paused.as_ref().is_none_or(|(r, _, _)| *r != reason) {
                                tracing::warn!(%reason, retry_in = ?backoff, "forwarding paused: records are kept");
                            }
                            shared.metrics.set_forwarding_paused(Some(&reason));
                            paused = Some((reason, backoff, tokio::time::Instant::now() + backoff));
                        }
                        // A batch that panicked leaves its lease to run out: sent again later.
                        Err(err) => tracing::error!(error = %err, "a forwarding batch failed"),
                    }
                }
                () = shared.wake.notified(), if idle => {}
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => break,
            }
        }
        while in_flight.next().await.is_some() {}
    }
}
