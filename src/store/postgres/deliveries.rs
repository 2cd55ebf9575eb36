//! Deferred deliveries on PostgreSQL: claimed for fetching with
//! `FOR UPDATE SKIP LOCKED`, and settled with the records the fetch resolved
//! in the same transaction.

use std::time::Duration;

use async_trait::async_trait;

use super::{PostgresStore, db_now, ingest::insert_records};
use crate::store::{
    DeferredDelivery, Deliveries, FetchOutcome, IngestOutcome, StoreError, duration_ms, lease_token,
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Deliveries for PostgresStore {
    async fn claim_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<DeferredDelivery>> {
        let lease_ms = duration_ms(lease);
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            let now = db_now(&tx).await?;
            tx.execute(
                "UPDATE deliveries SET status = 'fetch', lease_owner = NULL
                 WHERE status = 'fetching' AND leased_until_ms <= $1",
                &[&now],
            )
            .await?;
            let rows = tx
                .query(
                    "SELECT id, source, body, attempts, received_ms FROM deliveries
                     WHERE status = 'fetch' AND next_attempt_ms <= $1
                     ORDER BY next_attempt_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&now, &(limit as i64)],
                )
                .await?;
            let mut due = Vec::with_capacity(rows.len());
            for row in rows {
                let delivery = DeferredDelivery {
                    id: row.get(0),
                    source: row.get(1),
                    body: row.get(2),
                    attempts: row.get::<_, i64>(3) + 1,
                    received_ms: row.get(4),
                    lease: lease_token(),
                };
                tx.execute(
                    "UPDATE deliveries SET status = 'fetching', lease_owner = $2,
                         leased_until_ms = $3, attempts = attempts + 1
                     WHERE id = $1",
                    &[&delivery.id, &delivery.lease, &now.saturating_add(lease_ms)],
                )
                .await?;
                due.push(delivery);
            }
            tx.commit().await?;
            Ok(due)
        })
        .await
    }

    async fn settle_delivery(
        &self,
        delivery: &DeferredDelivery,
        outcome: FetchOutcome,
    ) -> Result<IngestOutcome> {
        let delivery = delivery.clone();
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            let now = db_now(&tx).await?;
            let held = tx
                .query_opt(
                    "SELECT 1 FROM deliveries
                     WHERE id = $1 AND status = 'fetching' AND lease_owner = $2 FOR UPDATE",
                    &[&delivery.id, &delivery.lease],
                )
                .await?
                .is_some();
            if !held {
                // The lease ran out and another fetcher owns the delivery now.
                return Ok(IngestOutcome::default());
            }
            let (status, next_attempt, error, fresh) = match &outcome {
                FetchOutcome::Resolved { records, problem } => {
                    let rows = records
                        .iter()
                        .map(|record| (delivery.id, delivery.source.as_str(), record.clone()))
                        .collect();
                    let fresh = insert_records(&tx, rows).await?;
                    let status = if problem.is_some() { "failed" } else { "done" };
                    (status, None, problem.clone(), fresh)
                }
                FetchOutcome::Retry { delay, error } => (
                    "fetch",
                    Some(now.saturating_add(duration_ms(*delay))),
                    Some(error.clone()),
                    Vec::new(),
                ),
                FetchOutcome::Failed { reason } => {
                    ("failed", None, Some(reason.clone()), Vec::new())
                }
            };
            tx.execute(
                "UPDATE deliveries SET status = $2, next_attempt_ms = COALESCE($3, next_attempt_ms),
                     last_error = $4, lease_owner = NULL, leased_until_ms = NULL, updated_ms = $5
                 WHERE id = $1",
                &[&delivery.id, &status, &next_attempt, &error, &now],
            )
            .await?;
            tx.commit().await?;
            Ok(IngestOutcome { fresh })
        })
        .await
    }
}
