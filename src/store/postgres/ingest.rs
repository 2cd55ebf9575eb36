//! Ingest on PostgreSQL: deliveries and their records in a few multi-row
//! statements per group commit, whatever the group's size; retention's purge
//! in small chunks.

use std::sync::atomic::Ordering;

use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use tokio::sync::oneshot;

use super::{PostgresStore, lock};
use crate::{
    record::{Delivery, NewRecord},
    store::{Ingest, IngestOutcome, RecordStatus, StoreError},
};

type Result<T> = std::result::Result<T, StoreError>;

#[async_trait]
impl Ingest for PostgresStore {
    async fn ingest(&self, delivery: Delivery, records: Vec<NewRecord>) -> Result<IngestOutcome> {
        let (reply, answer) = oneshot::channel();
        let ingests = lock(&self.ingests).clone().ok_or(StoreError::Closed)?;
        ingests
            .send((delivery, records, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    fn alive(&self) -> bool {
        self.writer_alive.load(Ordering::SeqCst) && lock(&self.ingests).is_some()
    }

    async fn check_writable(&self) -> Result<()> {
        self.with(|client| async move {
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('heartbeat', clock_timestamp()::text)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn purge_settled(&self, older_than_ms: i64, max_rows: u64) -> Result<u64> {
        let max_rows = i64::try_from(max_rows).unwrap_or(i64::MAX);
        self.with(move |client| async move {
            let records = client
                .execute(
                    "DELETE FROM records WHERE id IN (
                         SELECT id FROM records
                         WHERE status IN ('delivered', 'dead', 'unmappable') AND updated_ms < $1
                         ORDER BY updated_ms LIMIT $2)",
                    &[&older_than_ms, &max_rows],
                )
                .await?;
            let room = max_rows - records as i64;
            if room <= 0 {
                return Ok(records);
            }
            let deliveries = client
                .execute(
                    "DELETE FROM deliveries WHERE id IN (
                         SELECT d.id FROM deliveries d
                         WHERE d.received_ms < $1 AND d.status IN ('done', 'failed')
                           AND NOT EXISTS (SELECT 1 FROM records r WHERE r.delivery_id = d.id)
                         ORDER BY d.id LIMIT $2)",
                    &[&older_than_ms, &room],
                )
                .await?;
            Ok(records + deliveries)
        })
        .await
    }

    async fn close(&self) {
        // Without its sender the writer ends once what is queued is committed.
        drop(lock(&self.ingests).take());
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            let _ = writer.await;
        }
        self.pool.close();
    }
}

/// Stores deliveries and their records: one statement for the deliveries,
/// then those of [`insert_records`]; a delivery that brought nothing new
/// leaves no trace to purge later.
pub(super) async fn insert_deliveries(
    tx: &impl GenericClient,
    jobs: &[(&Delivery, &[NewRecord])],
) -> Result<Vec<IngestOutcome>> {
    let sources: Vec<&str> = jobs.iter().map(|(d, _)| d.source).collect();
    let received: Vec<i64> = jobs.iter().map(|(d, _)| d.received_ms).collect();
    let bodies: Vec<&[u8]> = jobs.iter().map(|(d, _)| &d.body[..]).collect();
    let statuses: Vec<&str> = jobs
        .iter()
        .map(|(d, _)| if d.deferred { "fetch" } else { "done" })
        .collect();
    let requests: Vec<&str> = jobs.iter().map(|(d, _)| d.request_id.as_str()).collect();
    // Ids drawn before the insert, so each is known to be its input's.
    let ids: Vec<i64> = tx
        .query(
            "WITH d AS MATERIALIZED (
                 SELECT nextval('deliveries_id_seq') AS id, u.*
                 FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::text[], $5::text[])
                     WITH ORDINALITY AS u(source, received_ms, body, status, request_id, n)),
             stored AS (
                 INSERT INTO deliveries (id, source, received_ms, body, status, next_attempt_ms,
                     updated_ms, request_id)
                 SELECT id, source, received_ms, body, status, received_ms, received_ms, request_id
                 FROM d)
             SELECT id FROM d ORDER BY n",
            &[&sources, &received, &bodies, &statuses, &requests],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let rows = jobs
        .iter()
        .zip(&ids)
        .flat_map(|((delivery, records), id)| {
            records
                .iter()
                .map(move |record| (*id, delivery.source, record.clone()))
        })
        .collect();
    let mut fresh = insert_records(tx, rows).await?.into_iter();
    let outcomes: Vec<IngestOutcome> = jobs
        .iter()
        .map(|(_, records)| IngestOutcome {
            fresh: fresh.by_ref().take(records.len()).collect(),
        })
        .collect();
    let stale: Vec<i64> = jobs
        .iter()
        .zip(&ids)
        .zip(&outcomes)
        .filter(|(((delivery, _), _), outcome)| {
            !delivery.deferred && !outcome.fresh.contains(&true)
        })
        .map(|((_, id), _)| *id)
        .collect();
    if !stale.is_empty() {
        tx.execute("DELETE FROM deliveries WHERE id = ANY($1)", &[&stale])
            .await?;
    }
    Ok(outcomes)
}

/// A record to store: its delivery's id and source.
type RecordRow<'a> = (i64, &'a str, NewRecord);

/// Stores records (each new to the store or a duplicate, `fresh` in their
/// order), whatever their number, in three statements — five when leaves
/// among them look for the join they close: those come after the joins, so
/// a join and its leave may arrive in one commit.
pub(super) async fn insert_records(
    tx: &impl GenericClient,
    mut rows: Vec<RecordRow<'_>>,
) -> Result<Vec<bool>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    insert_groups(tx, &rows).await?;
    let (leaves, others): (Vec<usize>, Vec<usize>) =
        (0..rows.len()).partition(|&i| rows[i].2.wants_join());
    let mut fresh = vec![false; rows.len()];
    store_records(tx, &rows, &others, &mut fresh).await?;
    if !leaves.is_empty() {
        let (mut events, mut emails, mut sources, mut accounts, mut times) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &i in &leaves {
            let (_, source, record) = &rows[i];
            events.push(record.external_event_id.as_str());
            emails.push(record.email.as_str());
            sources.push(*source);
            accounts.push(record.external_account_id.as_str());
            times.push(record.interaction_ms);
        }
        let joins = tx
            .query(
                "SELECT (SELECT MAX(interaction_ms) FROM records
                         WHERE external_event_id = u.event AND email = u.email AND source = u.source
                           AND state = 'attend' AND external_account_id = u.account
                           AND interaction_ms <= u.at
                           AND (properties::jsonb ->> 'joinedAt') IS NOT NULL
                           AND (properties::jsonb ->> 'leftAt') IS NULL)
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])
                     WITH ORDINALITY AS u(event, email, source, account, at, n)
                 ORDER BY n",
                &[&events, &emails, &sources, &accounts, &times],
            )
            .await?;
        for (&i, row) in leaves.iter().zip(&joins) {
            if let Some(joined_ms) = row.get::<_, Option<i64>>(0) {
                rows[i].2.close_session(joined_ms);
            }
        }
        store_records(tx, &rows, &leaves, &mut fresh).await?;
    }
    Ok(fresh)
}

/// The groups of `rows` that are not there yet. Read back by the next
/// statement, which also sees the ones another replica committed meanwhile.
async fn insert_groups(tx: &impl GenericClient, rows: &[RecordRow<'_>]) -> Result<()> {
    let (mut accounts, mut events, mut states) = (Vec::new(), Vec::new(), Vec::new());
    for (_, _, record) in rows {
        accounts.push(record.external_account_id.as_str());
        events.push(record.external_event_id.as_str());
        states.push(record.state.as_str());
    }
    tx.execute(
        "INSERT INTO groups (external_account_id, external_event_id, state)
         SELECT DISTINCT k.account, k.event, k.state
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(account, event, state)
         WHERE NOT EXISTS (SELECT 1 FROM groups g WHERE g.external_account_id = k.account
                               AND g.external_event_id = k.event AND g.state = k.state)
         ON CONFLICT DO NOTHING",
        &[&accounts, &events, &states],
    )
    .await?;
    Ok(())
}

/// One statement for the records `which` of `rows`, marking each stored one
/// fresh: the first of equal records (here or in the store) wins.
async fn store_records(
    tx: &impl GenericClient,
    rows: &[RecordRow<'_>],
    which: &[usize],
    fresh: &mut [bool],
) -> Result<()> {
    if which.is_empty() {
        return Ok(());
    }
    let n = which.len();
    let (mut deliveries, mut keys, mut sources, mut states, mut emails) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut first_names, mut last_names, mut vids, mut participants) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut events, mut accounts, mut times, mut properties, mut infos, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for &i in which {
        let (delivery, source, record) = &rows[i];
        deliveries.push(*delivery);
        keys.push(record.dedupe_key(source).to_vec());
        sources.push(*source);
        states.push(record.state.as_str());
        emails.push(record.email.as_str());
        first_names.push(record.first_name.as_deref());
        last_names.push(record.last_name.as_deref());
        vids.push(record.vid);
        participants.push(record.participant.as_deref());
        events.push(record.external_event_id.as_str());
        accounts.push(record.external_account_id.as_str());
        times.push(record.interaction_ms);
        properties.push(serde_json::to_string(&record.properties).expect("string map serializes"));
        infos.push(
            record
                .event
                .as_ref()
                .map(|e| serde_json::to_string(e).expect("serializes")),
        );
        statuses.push(RecordStatus::initial(record).as_str());
    }
    let stored = tx
        .query(
            "WITH r AS MATERIALIZED (
                 SELECT nextval('records_id_seq') AS id, u.*
                 FROM unnest($1::bigint[], $2::bytea[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::bigint[], $9::text[], $10::text[],
                             $11::text[], $12::bigint[], $13::text[], $14::text[], $15::text[])
                     WITH ORDINALITY AS u(delivery_id, dedupe_key, source, state, email,
                         first_name, last_name, vid, participant, external_event_id,
                         external_account_id, interaction_ms, properties, event_info, status, n)),
             now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms),
             stored AS (
                 INSERT INTO records (id, delivery_id, group_id, dedupe_key, source, state, email,
                     first_name, last_name, vid, participant, external_event_id,
                     external_account_id, interaction_ms, properties, event_info, status,
                     next_attempt_ms, created_ms, updated_ms)
                 SELECT r.id, r.delivery_id, g.id, r.dedupe_key, r.source, r.state, r.email,
                     r.first_name, r.last_name, r.vid, r.participant, r.external_event_id,
                     r.external_account_id, r.interaction_ms, r.properties, r.event_info, r.status,
                     now.ms, now.ms, now.ms
                 FROM r CROSS JOIN now
                 JOIN groups g ON g.external_account_id = r.external_account_id
                     AND g.external_event_id = r.external_event_id AND g.state = r.state
                 ORDER BY r.n
                 ON CONFLICT (dedupe_key) DO NOTHING
                 RETURNING id)
             SELECT r.n FROM r JOIN stored USING (id)",
            &[
                &deliveries,
                &keys,
                &sources,
                &states,
                &emails,
                &first_names,
                &last_names,
                &vids,
                &participants,
                &events,
                &accounts,
                &times,
                &properties,
                &infos,
                &statuses,
            ],
        )
        .await?;
    for row in stored {
        let n: i64 = row.get(0);
        fresh[which[(n - 1) as usize]] = true;
    }
    Ok(())
}
