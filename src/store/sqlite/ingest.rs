//! Ingest on SQLite: deliveries and their records, written in the writer's
//! group transaction; retention's purge in small chunks.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Msg, SqliteStore, sql_error};
use crate::{
    record::{Delivery, GroupKey, NewRecord},
    store::{Ingest, IngestOutcome, RecordStatus, StoreError},
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Ingest for SqliteStore {
    async fn ingest(&self, delivery: Delivery, records: Vec<NewRecord>) -> Result<IngestOutcome> {
        self.write(move |conn, now| insert_delivery(conn, &delivery, &records, now))
            .await
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    fn alive(&self) -> bool {
        self.writer_alive.load(Ordering::SeqCst)
    }

    async fn check_writable(&self) -> Result<()> {
        self.write(|conn, now| {
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('heartbeat', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )
            .and_then(|mut upsert| upsert.execute(params![now.to_string()]))
            .map(drop)
            .map_err(sql_error)
        })
        .await
    }

    async fn purge_settled(&self, older_than_ms: i64, max_rows: u64) -> Result<u64> {
        self.write(move |conn, _| purge_settled(conn, older_than_ms, max_rows))
            .await
    }

    async fn close(&self) {
        let _ = self.jobs.send(Msg::Stop).await;
        self.readers.permits.close();
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

fn insert_delivery(
    conn: &Connection,
    delivery: &Delivery,
    records: &[NewRecord],
    now: i64,
) -> Result<IngestOutcome> {
    conn.prepare_cached(
        "INSERT INTO deliveries (source, received_ms, body, status, next_attempt_ms, updated_ms,
             request_id)
         VALUES (?1, ?2, ?3, ?4, ?2, ?2, ?5)",
    )
    .and_then(|mut insert| {
        insert.execute(params![
            delivery.source,
            delivery.received_ms,
            delivery.body,
            if delivery.deferred { "fetch" } else { "done" },
            delivery.request_id,
        ])
    })
    .map_err(sql_error)?;
    let delivery_id = conn.last_insert_rowid();
    let fresh = insert_records(conn, delivery_id, delivery.source, now, records)?;
    if !delivery.deferred && !fresh.contains(&true) {
        // Nothing new: a repeated delivery leaves no trace to purge later.
        conn.prepare_cached("DELETE FROM deliveries WHERE id = ?1")
            .and_then(|mut delete| delete.execute(params![delivery_id]))
            .map_err(sql_error)?;
    }
    Ok(IngestOutcome { fresh })
}

fn group_id(conn: &Connection, group: &GroupKey) -> Result<i64> {
    let key = params![
        group.external_account_id,
        group.external_event_id,
        group.state.as_str()
    ];
    let found = conn
        .prepare_cached(
            "SELECT id FROM groups
             WHERE external_account_id = ?1 AND external_event_id = ?2 AND state = ?3",
        )
        .and_then(|mut select| select.query_row(key, |row| row.get(0)).optional())
        .map_err(sql_error)?;
    if let Some(id) = found {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO groups (external_account_id, external_event_id, state) VALUES (?1, ?2, ?3)",
    )
    .and_then(|mut insert| insert.execute(key))
    .map_err(sql_error)?;
    Ok(conn.last_insert_rowid())
}

/// The interaction time of the latest open join (an `attend` with `joinedAt`
/// and no `leftAt`) of this contact at this event, at or before `at_ms`.
fn open_join(conn: &Connection, source: &str, record: &NewRecord) -> Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MAX(interaction_ms) FROM records
         WHERE external_event_id = ?1 AND email = ?2 AND source = ?3 AND state = 'attend'
           AND external_account_id = ?4 AND interaction_ms <= ?5
           AND json_extract(properties, '$.joinedAt') IS NOT NULL
           AND json_extract(properties, '$.leftAt') IS NULL",
    )
    .and_then(|mut select| {
        select.query_row(
            params![
                record.external_event_id,
                record.email,
                source,
                record.external_account_id,
                record.interaction_ms
            ],
            |row| row.get(0),
        )
    })
    .map_err(sql_error)
}

/// Stores records; per record, whether it was new.
pub(super) fn insert_records(
    conn: &Connection,
    delivery_id: i64,
    source: &str,
    now: i64,
    records: &[NewRecord],
) -> Result<Vec<bool>> {
    records
        .iter()
        .map(|record| {
            let mut record = record.clone();
            if record.wants_join()
                && let Some(joined_ms) = open_join(conn, source, &record)?
            {
                record.close_session(joined_ms);
            }
            let group = group_id(conn, &record.group())?;
            let properties =
                serde_json::to_string(&record.properties).expect("string map serializes");
            let event_info = record
                .event
                .as_ref()
                .map(|e| serde_json::to_string(e).expect("serializes"));
            conn.prepare_cached(
                "INSERT INTO records (delivery_id, group_id, dedupe_key, source, state, email,
                     first_name, last_name, vid, participant, external_event_id, external_account_id,
                     interaction_ms, properties, event_info, status, next_attempt_ms, created_ms,
                     updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?17, ?17)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    delivery_id,
                    group,
                    &record.dedupe_key(source)[..],
                    source,
                    record.state.as_str(),
                    record.email,
                    record.first_name,
                    record.last_name,
                    record.vid,
                    record.participant,
                    record.external_event_id,
                    record.external_account_id,
                    record.interaction_ms,
                    properties,
                    event_info,
                    RecordStatus::initial(&record).as_str(),
                    now,
                ])
            })
            .map(|n| n == 1)
            .map_err(sql_error)
        })
        .collect()
}

fn purge_settled(conn: &Connection, older_than_ms: i64, max_rows: u64) -> Result<u64> {
    let records = conn
        .prepare_cached(
            "DELETE FROM records WHERE id IN (
                 SELECT id FROM records
                 WHERE status IN ('delivered', 'dead', 'unmappable') AND updated_ms < ?1
                 ORDER BY updated_ms LIMIT ?2)",
        )
        .and_then(|mut delete| delete.execute(params![older_than_ms, max_rows as i64]))
        .map_err(sql_error)? as u64;
    let room = max_rows.saturating_sub(records);
    if room == 0 {
        return Ok(records);
    }
    let deliveries = conn
        .prepare_cached(
            "DELETE FROM deliveries WHERE id IN (
                 SELECT d.id FROM deliveries d
                 WHERE d.received_ms < ?1 AND d.status IN ('done', 'failed')
                   AND NOT EXISTS (SELECT 1 FROM records r WHERE r.delivery_id = d.id)
                 ORDER BY d.id LIMIT ?2)",
        )
        .and_then(|mut delete| delete.execute(params![older_than_ms, room as i64]))
        .map_err(sql_error)? as u64;
    Ok(records + deliveries)
}
