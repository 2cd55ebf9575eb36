//! Deferred deliveries on SQLite: claimed for fetching under a lease, and
//! settled with the records the fetch resolved in the same transaction.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, params};

use super::{SqliteStore, ingest::insert_records, sql_error};
use crate::store::{
    DeferredDelivery, Deliveries, FetchOutcome, IngestOutcome, StoreError, duration_ms, lease_token,
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Deliveries for SqliteStore {
    async fn claim_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<DeferredDelivery>> {
        let lease = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        self.write(move |conn, now| claim_deliveries(conn, limit, now.saturating_add(lease), now))
            .await
    }

    async fn settle_delivery(
        &self,
        delivery: &DeferredDelivery,
        outcome: FetchOutcome,
    ) -> Result<IngestOutcome> {
        let delivery = delivery.clone();
        self.write(move |conn, now| settle_delivery(conn, &delivery, &outcome, now))
            .await
    }
}

fn claim_deliveries(
    conn: &Connection,
    limit: usize,
    lease_until: i64,
    now: i64,
) -> Result<Vec<DeferredDelivery>> {
    conn.prepare_cached(
        "UPDATE deliveries SET status = 'fetch', lease_owner = NULL
         WHERE status = 'fetching' AND leased_until_ms <= ?1",
    )
    .and_then(|mut update| update.execute(params![now]))
    .map_err(sql_error)?;
    let due: Vec<DeferredDelivery> = conn
        .prepare_cached(
            "SELECT id, source, body, attempts, received_ms FROM deliveries
             WHERE status = 'fetch' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms, id LIMIT ?2",
        )
        .and_then(|mut select| {
            select
                .query_map(params![now, limit as i64], |row| {
                    Ok(DeferredDelivery {
                        id: row.get(0)?,
                        source: row.get(1)?,
                        body: row.get(2)?,
                        attempts: row.get::<_, i64>(3)? + 1,
                        received_ms: row.get(4)?,
                        lease: lease_token(),
                    })
                })?
                .collect()
        })
        .map_err(sql_error)?;
    for delivery in &due {
        conn.prepare_cached(
            "UPDATE deliveries SET status = 'fetching', lease_owner = ?2, leased_until_ms = ?3,
                 attempts = attempts + 1
             WHERE id = ?1",
        )
        .and_then(|mut update| update.execute(params![delivery.id, delivery.lease, lease_until]))
        .map_err(sql_error)?;
    }
    Ok(due)
}

fn settle_delivery(
    conn: &Connection,
    delivery: &DeferredDelivery,
    outcome: &FetchOutcome,
    now: i64,
) -> Result<IngestOutcome> {
    let held: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM deliveries
                            WHERE id = ?1 AND status = 'fetching' AND lease_owner = ?2)",
        )
        .and_then(|mut select| {
            select.query_row(params![delivery.id, delivery.lease], |row| row.get(0))
        })
        .map_err(sql_error)?;
    if !held {
        // The lease ran out and another fetcher owns the delivery now.
        return Ok(IngestOutcome::default());
    }
    let (status, next_attempt, error, fresh) = match outcome {
        FetchOutcome::Resolved { records, problem } => {
            let fresh = insert_records(conn, delivery.id, &delivery.source, now, records)?;
            let status = if problem.is_some() { "failed" } else { "done" };
            (status, None, problem.as_deref(), fresh)
        }
        FetchOutcome::Retry { delay, error } => (
            "fetch",
            Some(now + duration_ms(*delay)),
            Some(error.as_str()),
            Vec::new(),
        ),
        FetchOutcome::Failed { reason } => ("failed", None, Some(reason.as_str()), Vec::new()),
    };
    conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, next_attempt_ms = COALESCE(?3, next_attempt_ms),
             last_error = ?4, lease_owner = NULL, leased_until_ms = NULL, updated_ms = ?5
         WHERE id = ?1",
    )
    .and_then(|mut update| update.execute(params![delivery.id, status, next_attempt, error, now]))
    .map_err(sql_error)?;
    Ok(IngestOutcome { fresh })
}
