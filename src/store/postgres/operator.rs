//! The statements behind the admin API and the operator subcommands on
//! PostgreSQL: listing, retrying dead letters, tallies.

use async_trait::async_trait;

use super::{PostgresStore, db_now, to_records};
use crate::store::{
    EventTally, Operator, OwedDelivery, RECORD_COLUMNS, RecordFilter, RecordStatus, RetryCounts,
    RetryOutcome, SourceTally, StoreError, StoredRecord, operator,
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Operator for PostgresStore {
    async fn list_records(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>> {
        let filter = filter.clone();
        self.with(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM records
                         WHERE status IN ({}) AND id > $1
                           AND ($2::text IS NULL OR external_event_id = $2)
                           AND ($3::text IS NULL OR source = $3)
                         ORDER BY id LIMIT $4",
                        operator::record_statuses(filter.status)
                    ),
                    &[&after, &filter.event, &filter.source, &limit],
                )
                .await?;
            to_records(&rows)
        })
        .await
    }

    async fn list_owed_deliveries(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OwedDelivery>> {
        let Some(statuses) = operator::delivery_statuses(filter.status) else {
            return Ok(Vec::new());
        };
        let source = filter.source.clone();
        self.with(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT id, source, status, attempts, received_ms, next_attempt_ms, last_error,
                             request_id
                         FROM deliveries
                         WHERE status IN ({statuses}) AND id > $1 AND ($2::text IS NULL OR source = $2)
                         ORDER BY id LIMIT $3"
                    ),
                    &[&after, &source, &limit],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| OwedDelivery {
                    id: row.get(0),
                    source: row.get(1),
                    status: RecordStatus::from_stored(row.get(2)).unwrap_or(RecordStatus::Pending),
                    attempts: row.get(3),
                    received_ms: row.get(4),
                    next_attempt_ms: row.get(5),
                    last_error: row.get(6),
                    request_id: row.get(7),
                })
                .collect())
        })
        .await
    }

    async fn retry_record(&self, id: i64) -> Result<RetryOutcome> {
        self.retry_one("records", "'dead'", "'pending'", id).await
    }

    async fn retry_delivery(&self, id: i64) -> Result<RetryOutcome> {
        self.retry_one("deliveries", "'failed'", "'fetch'", id)
            .await
    }

    async fn retry_dead(&self, filter: &RecordFilter) -> Result<RetryCounts> {
        let filter = filter.clone();
        self.with(move |mut client| async move {
            let tx = client.transaction().await?;
            let now = db_now(&tx).await?;
            let reason = operator::contains_pattern(filter.reason.as_deref());
            let records = tx
                .execute(
                    "UPDATE records SET status = 'pending', next_attempt_ms = $1, attempts = 0,
                         updated_ms = $1
                     WHERE status = 'dead' AND ($2::text IS NULL OR external_event_id = $2)
                       AND ($3::text IS NULL OR source = $3)
                       AND ($4::text IS NULL OR LOWER(last_error) LIKE $4 ESCAPE '\\')",
                    &[&now, &filter.event, &filter.source, &reason],
                )
                .await?;
            // A delivery's event is known only once it is fetched.
            let deliveries = if filter.event.is_some() {
                0
            } else {
                tx.execute(
                    "UPDATE deliveries SET status = 'fetch', next_attempt_ms = $1, attempts = 0,
                         updated_ms = $1
                     WHERE status = 'failed' AND ($2::text IS NULL OR source = $2)
                       AND ($3::text IS NULL OR LOWER(last_error) LIKE $3 ESCAPE '\\')",
                    &[&now, &filter.source, &reason],
                )
                .await?
            };
            tx.commit().await?;
            Ok(RetryCounts {
                records,
                deliveries,
            })
        })
        .await
    }

    async fn event_tallies(&self, filter: &RecordFilter) -> Result<Vec<EventTally>> {
        let filter = filter.clone();
        self.with(move |client| async move {
            let rows = client
                .query(
                    "SELECT external_account_id, external_event_id, state, status, COUNT(*),
                         MIN(created_ms), MAX(created_ms)
                     FROM records
                     WHERE ($1::text IS NULL OR external_event_id = $1)
                       AND ($2::text IS NULL OR source = $2)
                     GROUP BY external_account_id, external_event_id, state, status
                     ORDER BY external_account_id, external_event_id, state, status",
                    &[&filter.event, &filter.source],
                )
                .await?;
            Ok(rows
                .into_iter()
                .filter_map(|row| {
                    operator::event_tally((
                        row.get(0),
                        row.get(1),
                        row.get(2),
                        row.get(3),
                        row.get(4),
                        row.get(5),
                        row.get(6),
                    ))
                })
                .collect())
        })
        .await
    }

    async fn source_tallies(&self) -> Result<Vec<SourceTally>> {
        self.with(|client| async move {
            let mut rows: Vec<(String, String, i64)> = Vec::new();
            for sql in [
                "SELECT source, status, COUNT(*) FROM records GROUP BY source, status",
                "SELECT source, status, COUNT(*) FROM deliveries WHERE status <> 'done'
                 GROUP BY source, status",
            ] {
                let found = client.query(sql, &[]).await?;
                rows.extend(found.iter().map(|row| (row.get(0), row.get(1), row.get(2))));
            }
            Ok(operator::source_tallies(rows))
        })
        .await
    }
}

impl PostgresStore {
    /// Makes a dead record or failed delivery due again; only one in that
    /// state changes, so a second retry (from any replica) is a no-op.
    /// `table` and the statuses are ours, never the caller's text.
    async fn retry_one(
        &self,
        table: &'static str,
        dead: &'static str,
        again: &'static str,
        id: i64,
    ) -> Result<RetryOutcome> {
        self.with(move |client| async move {
            let now = db_now(&client).await?;
            let changed = client
                .execute(
                    &format!(
                        "UPDATE {table} SET status = {again}, next_attempt_ms = $2, attempts = 0,
                             updated_ms = $2
                         WHERE id = $1 AND status = {dead}"
                    ),
                    &[&id, &now],
                )
                .await?;
            if changed > 0 {
                return Ok(RetryOutcome::Retried);
            }
            let exists = client
                .query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
                .await?
                .is_some();
            Ok(RetryOutcome::unchanged(exists))
        })
        .await
    }
}
