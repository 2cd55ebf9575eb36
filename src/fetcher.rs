//! The fetcher: deliveries whose platform sends only a pointer (Eventbrite's
//! `api_url`) are fetched from the platform's API after they were
//! acknowledged, mapped to records and stored; a platform that fails is
//! retried with backoff until `RELAY_MAX_RECORD_AGE_SECS`.

use std::{collections::HashMap, rc::Rc, sync::Arc, time::Duration};

use futures_util::future::join_all;
use tokio::sync::Notify;

use crate::{
    metrics::Metrics,
    record::now_ms,
    retry,
    sources::{Fetch, FetchError, Fetched},
    store::{DeferredDelivery, Deliveries, FetchOutcome, StoreError},
};

/// Deliveries one round takes.
const ROUND: usize = 50;
/// How long a claimed delivery stays with this fetcher (a fetch times out long before).
const LEASE: Duration = Duration::from_secs(120);
/// Retries come due without a wake-up.
const IDLE_POLL: Duration = Duration::from_secs(1);
const STORE_RETRY: Duration = Duration::from_secs(1);

pub struct Fetcher {
    store: Arc<dyn Deliveries>,
    platforms: Vec<Rc<dyn Fetch>>,
    max_age: Duration,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    forwarder_wake: Arc<Notify>,
}

impl Fetcher {
    pub fn new(
        store: Arc<dyn Deliveries>,
        platforms: Vec<Rc<dyn Fetch>>,
        max_age: Duration,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        forwarder_wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            platforms,
            max_age,
            metrics,
            wake,
            forwarder_wake,
        }
    }

    /// Fetches until `stop` resolves; a round under way is finished first,
    /// so its deliveries are settled rather than left leased.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        loop {
            let wait = match self.round().await {
                Ok(true) => Duration::ZERO,
                Ok(false) => IDLE_POLL,
                Err(err) => {
                    tracing::error!(error = %err, "fetching cannot use the store");
                    STORE_RETRY
                }
            };
            tokio::select! {
                biased;
                () = &mut stop => return,
                () = self.wake.notified(), if !wait.is_zero() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One pass over the due deliveries; false when there were none.
    async fn round(&self) -> Result<bool, StoreError> {
        let due = self.store.claim_deliveries(ROUND, LEASE).await?;
        if due.is_empty() {
            return Ok(false);
        }
        // Identical deliveries waiting together (a purchase's burst repeats
        // them) need one fetch: it shows the newest state for all of them.
        let mut groups: Vec<Vec<DeferredDelivery>> = Vec::new();
        let mut index: HashMap<(String, Vec<u8>), usize> = HashMap::new();
        for delivery in due {
            let key = (delivery.source.clone(), delivery.body.clone());
            let slot = *index.entry(key).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[slot].push(delivery);
        }
        let fetched = join_all(groups.iter().map(|group| self.fetch(&group[0]))).await;

        let mut stored_records = false;
        for (group, result) in groups.into_iter().zip(fetched) {
            for delivery in group {
                let (label, outcome) = self.outcome(&delivery, &result);
                self.metrics
                    .fetches
                    .with_label_values(&[delivery.source.as_str(), label])
                    .inc();
                if let FetchOutcome::Failed { reason }
                | FetchOutcome::Resolved {
                    problem: Some(reason),
                    ..
                } = &outcome
                {
                    tracing::warn!(delivery = delivery.id, source = %delivery.source, %reason, "fetch gave up");
                }
                let stored = self.store.settle_delivery(&delivery, outcome).await?;
                stored_records |= stored.accepted() > 0;
            }
        }
        if stored_records {
            self.forwarder_wake.notify_one();
        }
        Ok(true)
    }

    async fn fetch(&self, delivery: &DeferredDelivery) -> Result<Fetched, FetchError> {
        let platform = self
            .platforms
            .iter()
            .find(|p| p.source() == delivery.source)
            .ok_or_else(|| {
                FetchError::Retry(format!("{} is not configured to fetch", delivery.source))
            })?;
        platform.fetch(&delivery.body).await
    }

    fn outcome(
        &self,
        delivery: &DeferredDelivery,
        result: &Result<Fetched, FetchError>,
    ) -> (&'static str, FetchOutcome) {
        match result {
            Ok(fetched) => (
                if fetched.problem.is_some() {
                    "failed"
                } else {
                    "resolved"
                },
                FetchOutcome::Resolved {
                    records: fetched.records.clone(),
                    problem: fetched.problem.clone(),
                },
            ),
            Err(FetchError::Failed(reason)) => (
                "failed",
                FetchOutcome::Failed {
                    reason: reason.clone(),
                },
            ),
            Err(FetchError::Retry(reason)) => {
                match retry::give_up(now_ms(), delivery.received_ms, self.max_age, reason) {
                    Some(reason) => ("failed", FetchOutcome::Failed { reason }),
                    None => (
                        "retry",
                        FetchOutcome::Retry {
                            delay: retry::backoff(delivery.attempts),
                            error: reason.clone(),
                        },
                    ),
                }
            }
        }
    }
}
