//! PostgreSQL store, for several replicas sharing one queue. Work runs on a
//! small runtime of the store's own (the HTTP workers each have a
//! single-threaded one); connections come from a deadpool pool. Concurrent
//! ingests are committed together by one writer task (group commit), the
//! database's clock decides due times and leases, and claims take whole
//! groups with `FOR UPDATE SKIP LOCKED`, so two replicas never take the same
//! record.

mod connect;
mod schema;

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Row, error::SqlState};

use super::{
    ClaimRequest, Claimed, ClaimedBatch, CompletionClaim, CredentialLock, DeferredDelivery,
    EventTally, FetchOutcome, IngestOutcome, OpenError, OwedDelivery, QueueStats, RecordFilter,
    RecordStatus, RetryCounts, Settlement, SourceTally, Store, StoreError, StoreOptions,
    StoredCredential, StoredRecord, admin, duration_ms, lease_token, plan::ClaimPlan,
};
use crate::{
    record::{Delivery, EventInfo, NewRecord, State},
    settings::Secret,
};

/// A database that does not answer within this fails the operation (503 on
/// ingest) instead of holding a webhook past the platform's own timeout.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);
/// Most ingests one transaction takes.
const MAX_GROUP: usize = 256;
const QUEUE_DEPTH: usize = 4096;
/// A call with no answer after this long is taken as lost (its replica died).
const LOST_CALL: Duration = Duration::from_secs(60);

/// PostgreSQL's errors in the store's kinds: a lost connection, a lock or a
/// server going away may pass; the rest is broken.
fn pg_error(err: tokio_postgres::Error) -> StoreError {
    let transient_code = err.code().is_some_and(|code| {
        let class = &code.code()[..2];
        matches!(class, "08" | "40" | "53" | "57" | "58")
            || *code == SqlState::LOCK_NOT_AVAILABLE
            || *code == SqlState::QUERY_CANCELED
    });
    if err.is_closed() || transient_code || err.as_db_error().is_none() {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Broken(format!("database error: {err}"))
    }
}

fn pool_error(err: deadpool_postgres::PoolError) -> StoreError {
    match err {
        deadpool_postgres::PoolError::Backend(err) => pg_error(err),
        deadpool_postgres::PoolError::Closed => StoreError::Closed,
        other => StoreError::Unavailable(other.to_string()),
    }
}

type IngestReply = oneshot::Sender<Result<IngestOutcome, StoreError>>;

type IngestJob = (Delivery, Vec<NewRecord>, IngestReply);

pub struct PostgresStore {
    runtime: StoreRuntime,
    pool: Pool,
    /// `None` once closed.
    ingests: Mutex<Option<mpsc::Sender<IngestJob>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    writer_alive: Arc<AtomicBool>,
}

/// The store's runtime, shut down without blocking when the store goes
/// (it may be dropped inside another runtime).
struct StoreRuntime(Option<tokio::runtime::Runtime>);

impl StoreRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for StoreRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl PostgresStore {
    /// Connects (waiting for a server that is not up yet), migrates and
    /// starts the writer.
    pub fn open(url: &str, options: &StoreOptions) -> Result<Self, OpenError> {
        let target = connect::Target::parse(url)?;
        // Wrapped at once: dropped on a failure below, inside the caller's runtime.
        let runtime = StoreRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("postgres-store")
                .enable_all()
                .build()
                .map_err(|err| OpenError::Failed(format!("cannot start: {err}")))?,
        ));
        // Blocked on from a thread of its own: the caller may be inside a runtime.
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.get().block_on(connect::prepare(&target, options)))
                .join()
                .unwrap_or_else(|_| Err(OpenError::Failed("the migration panicked".into())))
        })?;
        let pool = connect::pool(&target, options)?;

        let (ingests, inbox) = mpsc::channel(QUEUE_DEPTH);
        let writer_alive = Arc::new(AtomicBool::new(true));
        let writer =
            runtime
                .get()
                .spawn(run_writer(pool.clone(), inbox, Arc::clone(&writer_alive)));
        Ok(Self {
            runtime,
            pool,
            ingests: Mutex::new(Some(ingests)),
            writer: Mutex::new(Some(writer)),
            writer_alive,
        })
    }

    /// Makes a dead record or failed delivery due again; only one in that
    /// state changes, so a second retry (from any replica) is a no-op.
    /// `table` and the statuses are ours, never the caller's text.
    async fn retry_one(
        &self,
        table: &'static str,
        dead: &'static str,
        again: &'static str,
        id: i64,
    ) -> Result<Option<bool>, StoreError> {
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
                .await
                .map_err(pg_error)?;
            if changed > 0 {
                return Ok(Some(true));
            }
            let exists = client
                .query_opt(&format!("SELECT 1 FROM {table} WHERE id = $1"), &[&id])
                .await
                .map_err(pg_error)?
                .is_some();
            Ok(exists.then_some(false))
        })
        .await
    }

    /// Runs `work` with a pooled connection on the store's runtime, within
    /// [`OPERATION_TIMEOUT`].
    async fn with<T, F, Fut>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send,
    {
        let pool = self.pool.clone();
        let task = self.runtime.get().spawn(async move {
            let run = async {
                let client = pool.get().await.map_err(pool_error)?;
                work(client).await
            };
            tokio::time::timeout(OPERATION_TIMEOUT, run)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(
                        "the database did not answer in time".into(),
                    ))
                })
        });
        task.await.map_err(|_| StoreError::Closed)?
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A session advisory lock; released (on the store's runtime) when dropped.
struct AdvisoryLock {
    client: Option<deadpool_postgres::Object>,
    key: String,
    runtime: tokio::runtime::Handle,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let key = std::mem::take(&mut self.key);
            self.runtime.spawn(async move {
                if let Err(err) = client
                    .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&key])
                    .await
                {
                    // The connection goes, and the lock with it.
                    tracing::warn!(error = %err, "cannot release the credential lock");
                    drop(deadpool_postgres::Object::take(client));
                }
            });
        }
    }
}

/// The database's clock, in epoch milliseconds.
async fn db_now(client: &impl GenericClient) -> Result<i64, StoreError> {
    client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await
        .map(|row| row.get(0))
        .map_err(pg_error)
}

/// Commits whatever ingests queued up meanwhile in one transaction.
async fn run_writer(pool: Pool, mut inbox: mpsc::Receiver<IngestJob>, alive: Arc<AtomicBool>) {
    while let Some(first) = inbox.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let committed = tokio::time::timeout(OPERATION_TIMEOUT, commit_group(&pool, &group))
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "the database did not answer in time".into(),
                ))
            });
        match committed {
            Ok(outcomes) => {
                for ((_, _, reply), outcome) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(outcome);
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "store cannot commit");
                for (_, _, reply) in group {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
}

/// The whole group in a few multi-row statements; if one of its rows makes a
/// statement fail, each delivery is stored again alone (in a savepoint), so
/// it sinks no other.
async fn commit_group(
    pool: &Pool,
    group: &[IngestJob],
) -> Result<Vec<Result<IngestOutcome, StoreError>>, StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let jobs: Vec<(&Delivery, &[NewRecord])> = group
        .iter()
        .map(|(delivery, records, _)| (delivery, &records[..]))
        .collect();
    let tx = client.transaction().await.map_err(pg_error)?;
    match insert_deliveries(&tx, &jobs).await {
        Ok(outcomes) => {
            tx.commit().await.map_err(pg_error)?;
            return Ok(outcomes.into_iter().map(Ok).collect());
        }
        Err(StoreError::Broken(err)) => {
            tracing::warn!(error = %err, "a delivery cannot be stored: storing its group one by one");
            tx.rollback().await.map_err(pg_error)?;
        }
        Err(err) => return Err(err),
    }
    let mut tx = client.transaction().await.map_err(pg_error)?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let savepoint = tx.savepoint("job").await.map_err(pg_error)?;
        let outcome = insert_deliveries(&savepoint, std::slice::from_ref(job)).await;
        match outcome {
            Ok(_) => savepoint.commit().await.map_err(pg_error)?,
            Err(_) => savepoint.rollback().await.map_err(pg_error)?,
        }
        outcomes.push(outcome.map(|mut one| one.remove(0)));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(outcomes)
}

/// Stores deliveries and their records: one statement for the deliveries,
/// then those of [`insert_records`]; a delivery that brought nothing new
/// leaves no trace to purge later.
async fn insert_deliveries(
    tx: &impl GenericClient,
    jobs: &[(&Delivery, &[NewRecord])],
) -> Result<Vec<IngestOutcome>, StoreError> {
    let sources: Vec<&str> = jobs.iter().map(|(d, _)| d.source).collect();
    let received: Vec<i64> = jobs.iter().map(|(d, _)| d.received_ms).collect();
    let bodies: Vec<&[u8]> = jobs.iter().map(|(d, _)| &d.body[..]).collect();
    let statuses: Vec<&str> = jobs
        .iter()
        .map(|(d, _)| if d.deferred { "fetch" } else { "done" })
        .collect();
    // Ids drawn before the insert, so each is known to be its input's.
    let ids: Vec<i64> = tx
        .query(
            "WITH d AS MATERIALIZED (
                 SELECT nextval('deliveries_id_seq') AS id, u.*
                 FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::text[]) WITH ORDINALITY
                     AS u(source, received_ms, body, status, n)),
             stored AS (
                 INSERT INTO deliveries (id, source, received_ms, body, status, next_attempt_ms, updated_ms)
                 SELECT id, source, received_ms, body, status, received_ms, received_ms FROM d)
             SELECT id FROM d ORDER BY n",
            &[&sources, &received, &bodies, &statuses],
        )
        .await
        .map_err(pg_error)?
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
            .await
            .map_err(pg_error)?;
    }
    Ok(outcomes)
}

/// A record to store: its delivery's id and source.
type RecordRow<'a> = (i64, &'a str, NewRecord);

/// Stores records (each new to the store or a duplicate, `fresh` in their
/// order), whatever their number, in three statements — five when leaves
/// among them look for the join they close: those come after the joins, so
/// a join and its leave may arrive in one commit.
async fn insert_records(
    tx: &impl GenericClient,
    mut rows: Vec<RecordRow<'_>>,
) -> Result<Vec<bool>, StoreError> {
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
            .await
            .map_err(pg_error)?;
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
async fn insert_groups(tx: &impl GenericClient, rows: &[RecordRow<'_>]) -> Result<(), StoreError> {
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
    .await
    .map(drop)
    .map_err(pg_error)
}

/// One statement for the records `which` of `rows`, marking each stored one
/// fresh: the first of equal records (here or in the store) wins.
async fn store_records(
    tx: &impl GenericClient,
    rows: &[RecordRow<'_>],
    which: &[usize],
    fresh: &mut [bool],
) -> Result<(), StoreError> {
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
        .await
        .map_err(pg_error)?;
    for row in stored {
        let n: i64 = row.get(0);
        fresh[which[(n - 1) as usize]] = true;
    }
    Ok(())
}

const RECORD_COLUMNS: &str = "id, source, state, status, email, first_name, last_name, vid,
    external_event_id, external_account_id, interaction_ms, properties, event_info,
    attempts, created_ms, next_attempt_ms, last_error, participant";

fn to_record(row: &Row) -> Result<StoredRecord, StoreError> {
    let broken = |what: String| StoreError::Broken(format!("stored record: {what}"));
    let state: String = row.get(2);
    let status: String = row.get(3);
    let properties: String = row.get(11);
    let event_info: Option<String> = row.get(12);
    Ok(StoredRecord {
        id: row.get(0),
        source: row.get(1),
        status: RecordStatus::from_stored(&status).ok_or_else(|| broken(status.clone()))?,
        attempts: row.get(13),
        created_ms: row.get(14),
        next_attempt_ms: row.get(15),
        last_error: row.get(16),
        record: NewRecord {
            state: State::parse(&state).ok_or_else(|| broken(state.clone()))?,
            email: row.get(4),
            first_name: row.get(5),
            last_name: row.get(6),
            vid: row.get(7),
            external_event_id: row.get(8),
            external_account_id: row.get(9),
            interaction_ms: row.get(10),
            properties: serde_json::from_str(&properties).map_err(|e| broken(e.to_string()))?,
            event: event_info
                .map(|json| serde_json::from_str::<EventInfo>(&json))
                .transpose()
                .map_err(|e| broken(e.to_string()))?,
            sender_id: None,
            participant: row.get(17),
            closes_session: false,
        },
    })
}

fn to_records(rows: &[Row]) -> Result<Vec<StoredRecord>, StoreError> {
    rows.iter().map(to_record).collect()
}

/// A lease that ran out belongs to a forwarder that died mid-call: its
/// records are pending again.
async fn release_expired(tx: &impl GenericClient, now: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE records SET status = 'pending', lease_owner = NULL
         WHERE status = 'leased' AND leased_until_ms <= $1",
        &[&now],
    )
    .await
    .map(drop)
    .map_err(pg_error)
}

/// Leases the records `ids` to a new lease until `lease_until`; the lease.
async fn lease(
    tx: &impl GenericClient,
    ids: &[i64],
    lease_until: i64,
) -> Result<String, StoreError> {
    let lease = lease_token();
    tx.execute(
        "UPDATE records SET status = 'leased', lease_owner = $1, leased_until_ms = $2,
             attempts = attempts + 1
         WHERE id = ANY($3)",
        &[&lease, &lease_until, &ids],
    )
    .await
    .map_err(pg_error)?;
    Ok(lease)
}

async fn claim(
    client: &mut deadpool_postgres::Object,
    request: &ClaimRequest,
) -> Result<Claimed, StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    let now = db_now(&tx).await?;
    release_expired(&tx, now).await?;
    // Groups with pending records: a skip-scan of the queue index.
    let groups: Vec<(i64, i64)> = tx
        .query(
            "WITH RECURSIVE g(id) AS (
                 (SELECT group_id FROM records WHERE status = 'pending' ORDER BY group_id LIMIT 1)
                 UNION ALL
                 SELECT (SELECT r.group_id FROM records r
                         WHERE r.status = 'pending' AND r.group_id > g.id
                         ORDER BY r.group_id LIMIT 1)
                 FROM g WHERE g.id IS NOT NULL)
             SELECT g.id, (SELECT MIN(next_attempt_ms) FROM records
                           WHERE status = 'pending' AND group_id = g.id)
             FROM g WHERE g.id IS NOT NULL
               AND g.id NOT IN (SELECT id FROM groups WHERE state = 'complete')",
            &[],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .filter_map(|row| Some((row.get(0), row.get::<_, Option<i64>>(1)?)))
        .collect();
    let mut plan = ClaimPlan::new(request, now, groups);
    let lease_until = now.saturating_add(duration_ms(request.lease));
    let mut batches = Vec::new();
    while let Some((group, limit)) = plan.next_read() {
        // A group another replica is claiming right now is skipped, not
        // waited for, and not shared: two claims reading one group at once
        // would split its next batch between them. (Ingest's key-share locks
        // on the group row do not conflict.)
        let rows = tx
            .query(
                &format!(
                    "WITH claiming AS (
                         SELECT id FROM groups WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED)
                     SELECT {RECORD_COLUMNS} FROM records
                     WHERE status = 'pending' AND group_id = (SELECT id FROM claiming)
                       AND next_attempt_ms <= $2
                     ORDER BY next_attempt_ms, id LIMIT $3 FOR UPDATE SKIP LOCKED"
                ),
                &[&group, &now, &(limit as i64)],
            )
            .await
            .map_err(pg_error)?;
        let chunk = to_records(&rows)?;
        if !plan.found(&chunk) {
            continue;
        }
        let ids: Vec<i64> = chunk.iter().map(|r| r.id).collect();
        let lease = lease(&tx, &ids, lease_until).await?;
        batches.push(ClaimedBatch::taken(lease, chunk));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(Claimed {
        next_ready_in: plan.next_ready_in(),
        batches,
    })
}

async fn claim_completions(
    client: &mut deadpool_postgres::Object,
    request: &CompletionClaim,
) -> Result<Vec<ClaimedBatch>, StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    let now = db_now(&tx).await?;
    release_expired(&tx, now).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {RECORD_COLUMNS} FROM records c
                 WHERE c.state = 'complete' AND c.status = 'pending'
                   AND CASE WHEN c.attempts = 0 THEN c.next_attempt_ms + $2
                            ELSE c.next_attempt_ms END <= $1
                   AND NOT EXISTS (
                       SELECT 1 FROM groups g JOIN records r ON r.group_id = g.id
                       WHERE g.external_account_id = c.external_account_id
                         AND g.external_event_id = c.external_event_id
                         AND g.state <> 'complete'
                         AND r.status = 'pending' AND r.id < COALESCE(c.covers_until, c.id))
                   AND NOT EXISTS (
                       SELECT 1 FROM records r
                       WHERE r.status = 'leased' AND r.state <> 'complete'
                         AND r.external_account_id = c.external_account_id
                         AND r.external_event_id = c.external_event_id
                         AND r.id < COALESCE(c.covers_until, c.id))
                 ORDER BY c.id LIMIT $3 FOR UPDATE OF c SKIP LOCKED"
            ),
            &[&now, &duration_ms(request.grace), &(request.max as i64)],
        )
        .await
        .map_err(pg_error)?;
    let lease_until = now.saturating_add(duration_ms(request.lease));
    let mut completions = Vec::with_capacity(rows.len());
    for completion in to_records(&rows)? {
        let lease = lease(&tx, &[completion.id], lease_until).await?;
        completions.push(ClaimedBatch::taken(lease, vec![completion]));
    }
    tx.commit().await.map_err(pg_error)?;
    Ok(completions)
}

#[async_trait]
impl Store for PostgresStore {
    async fn ingest(
        &self,
        delivery: Delivery,
        records: Vec<NewRecord>,
    ) -> Result<IngestOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        let ingests = lock(&self.ingests).clone().ok_or(StoreError::Closed)?;
        ingests
            .send((delivery, records, reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    fn alive(&self) -> bool {
        self.writer_alive.load(Ordering::SeqCst) && lock(&self.ingests).is_some()
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.with(|client| async move {
            client
                .execute(
                    "INSERT INTO meta (key, value) VALUES ('heartbeat', clock_timestamp()::text)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    &[],
                )
                .await
                .map(drop)
                .map_err(pg_error)
        })
        .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.with(|client| async move {
            let mut counts: Vec<(String, i64)> = Vec::new();
            for sql in [
                "SELECT status, COUNT(*) FROM records GROUP BY status",
                "SELECT status, COUNT(*) FROM deliveries WHERE status <> 'done' GROUP BY status",
            ] {
                let rows = client.query(sql, &[]).await.map_err(pg_error)?;
                counts.extend(rows.iter().map(|row| (row.get(0), row.get(1))));
            }
            let oldest: Option<i64> = client
                .query_one(
                    "SELECT LEAST(
                         (SELECT created_ms FROM records WHERE status = 'pending' ORDER BY id LIMIT 1),
                         (SELECT created_ms FROM records WHERE status = 'leased' ORDER BY id LIMIT 1),
                         (SELECT MIN(received_ms) FROM deliveries WHERE status IN ('fetch', 'fetching')))",
                    &[],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            Ok(QueueStats::from_counts(counts, oldest))
        })
        .await
    }

    async fn records(
        &self,
        status: Option<RecordStatus>,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.with(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT {RECORD_COLUMNS} FROM records WHERE status IN ({})
                         ORDER BY id LIMIT $1",
                        admin::record_statuses(status)
                    ),
                    &[&limit],
                )
                .await
                .map_err(pg_error)?;
            to_records(&rows)
        })
        .await
    }

    async fn list_records(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
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
                        admin::record_statuses(filter.status)
                    ),
                    &[&after, &filter.event, &filter.source, &limit],
                )
                .await
                .map_err(pg_error)?;
            to_records(&rows)
        })
        .await
    }

    async fn list_owed_deliveries(
        &self,
        filter: &RecordFilter,
        after: i64,
        limit: i64,
    ) -> Result<Vec<OwedDelivery>, StoreError> {
        let Some(statuses) = admin::delivery_statuses(filter.status) else {
            return Ok(Vec::new());
        };
        let source = filter.source.clone();
        self.with(move |client| async move {
            let rows = client
                .query(
                    &format!(
                        "SELECT id, source, status, attempts, received_ms, next_attempt_ms, last_error
                         FROM deliveries
                         WHERE status IN ({statuses}) AND id > $1 AND ($2::text IS NULL OR source = $2)
                         ORDER BY id LIMIT $3"
                    ),
                    &[&after, &source, &limit],
                )
                .await
                .map_err(pg_error)?;
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
                })
                .collect())
        })
        .await
    }

    async fn retry_record(&self, id: i64) -> Result<Option<bool>, StoreError> {
        self.retry_one("records", "'dead'", "'pending'", id).await
    }

    async fn retry_delivery(&self, id: i64) -> Result<Option<bool>, StoreError> {
        self.retry_one("deliveries", "'failed'", "'fetch'", id)
            .await
    }

    async fn retry_dead(&self, filter: &RecordFilter) -> Result<RetryCounts, StoreError> {
        let filter = filter.clone();
        self.with(move |mut client| async move {
            let tx = client.transaction().await.map_err(pg_error)?;
            let now = db_now(&tx).await?;
            let reason = admin::contains_pattern(filter.reason.as_deref());
            let records = tx
                .execute(
                    "UPDATE records SET status = 'pending', next_attempt_ms = $1, attempts = 0,
                         updated_ms = $1
                     WHERE status = 'dead' AND ($2::text IS NULL OR external_event_id = $2)
                       AND ($3::text IS NULL OR source = $3)
                       AND ($4::text IS NULL OR LOWER(last_error) LIKE $4 ESCAPE '\\')",
                    &[&now, &filter.event, &filter.source, &reason],
                )
                .await
                .map_err(pg_error)?;
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
                .await
                .map_err(pg_error)?
            };
            tx.commit().await.map_err(pg_error)?;
            Ok(RetryCounts {
                records,
                deliveries,
            })
        })
        .await
    }

    async fn event_tallies(&self, filter: &RecordFilter) -> Result<Vec<EventTally>, StoreError> {
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
                .await
                .map_err(pg_error)?;
            Ok(rows
                .into_iter()
                .filter_map(|row| {
                    admin::event_tally((
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

    async fn source_tallies(&self) -> Result<Vec<SourceTally>, StoreError> {
        self.with(|client| async move {
            let mut rows: Vec<(String, String, i64)> = Vec::new();
            for sql in [
                "SELECT source, status, COUNT(*) FROM records GROUP BY source, status",
                "SELECT source, status, COUNT(*) FROM deliveries WHERE status <> 'done'
                 GROUP BY source, status",
            ] {
                let found = client.query(sql, &[]).await.map_err(pg_error)?;
                rows.extend(found.iter().map(|row| (row.get(0), row.get(1), row.get(2))));
            }
            Ok(admin::source_tallies(rows))
        })
        .await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claimed, StoreError> {
        let request = request.clone();
        self.with(move |mut client| async move { claim(&mut client, &request).await })
            .await
    }

    async fn claim_completions(
        &self,
        request: &CompletionClaim,
    ) -> Result<Vec<ClaimedBatch>, StoreError> {
        let request = request.clone();
        self.with(move |mut client| async move { claim_completions(&mut client, &request).await })
            .await
    }

    async fn renew(&self, lease: &str, extend: Duration) -> Result<bool, StoreError> {
        let (lease, extend) = (lease.to_owned(), duration_ms(extend));
        self.with(move |client| async move {
            client
                .execute(
                    "UPDATE records
                     SET leased_until_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $2
                     WHERE status = 'leased' AND lease_owner = $1",
                    &[&lease, &extend],
                )
                .await
                .map(|n| n > 0)
                .map_err(pg_error)
        })
        .await
    }

    async fn settle(
        &self,
        lease: &str,
        outcomes: Vec<(i64, Settlement)>,
    ) -> Result<usize, StoreError> {
        let lease = lease.to_owned();
        self.with(move |client| async move {
            let now = db_now(&client).await?;
            let (mut ids, mut statuses, mut next, mut errors, mut released) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for (id, outcome) in &outcomes {
                let settled = outcome.columns(now);
                ids.push(*id);
                statuses.push(settled.status);
                next.push(settled.next_attempt_ms);
                errors.push(settled.error.map(str::to_owned));
                released.push(settled.released);
            }
            // One statement for the whole batch.
            client
                .execute(
                    "UPDATE records r SET status = u.status,
                         next_attempt_ms = COALESCE(u.next_attempt_ms, r.next_attempt_ms),
                         last_error = COALESCE(u.error, r.last_error),
                         leased_until_ms = NULL, lease_owner = NULL,
                         attempts = CASE WHEN u.released THEN GREATEST(r.attempts - 1, 0) ELSE r.attempts END,
                         updated_ms = CASE WHEN u.released THEN r.updated_ms ELSE $6 END
                     FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bool[])
                         AS u(id, status, next_attempt_ms, error, released)
                     WHERE r.id = u.id AND r.status = 'leased' AND r.lease_owner = $7",
                    &[&ids, &statuses, &next, &errors, &released, &now, &lease],
                )
                .await
                .map(|n| n as usize)
                .map_err(pg_error)
        })
        .await
    }

    async fn expedite_retries(&self) -> Result<u64, StoreError> {
        self.with(|client| async move {
            let now = db_now(&client).await?;
            client
                .execute(
                    "UPDATE records SET next_attempt_ms = $1
                     WHERE status = 'pending' AND next_attempt_ms > $1 AND attempts > 0",
                    &[&now],
                )
                .await
                .map_err(pg_error)
        })
        .await
    }

    async fn claim_deliveries(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<DeferredDelivery>, StoreError> {
        let lease_ms = duration_ms(lease);
        self.with(move |mut client| async move {
            let tx = client.transaction().await.map_err(pg_error)?;
            let now = db_now(&tx).await?;
            tx.execute(
                "UPDATE deliveries SET status = 'fetch', lease_owner = NULL
                 WHERE status = 'fetching' AND leased_until_ms <= $1",
                &[&now],
            )
            .await
            .map_err(pg_error)?;
            let rows = tx
                .query(
                    "SELECT id, source, body, attempts, received_ms FROM deliveries
                     WHERE status = 'fetch' AND next_attempt_ms <= $1
                     ORDER BY next_attempt_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED",
                    &[&now, &(limit as i64)],
                )
                .await
                .map_err(pg_error)?;
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
                .await
                .map_err(pg_error)?;
                due.push(delivery);
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(due)
        })
        .await
    }

    async fn settle_delivery(
        &self,
        delivery: &DeferredDelivery,
        outcome: FetchOutcome,
    ) -> Result<IngestOutcome, StoreError> {
        let delivery = delivery.clone();
        self.with(move |mut client| async move {
            let tx = client.transaction().await.map_err(pg_error)?;
            let now = db_now(&tx).await?;
            let held = tx
                .query_opt(
                    "SELECT 1 FROM deliveries
                     WHERE id = $1 AND status = 'fetching' AND lease_owner = $2 FOR UPDATE",
                    &[&delivery.id, &delivery.lease],
                )
                .await
                .map_err(pg_error)?
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
            .await
            .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(IngestOutcome { fresh })
        })
        .await
    }

    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>, StoreError> {
        let key = key.to_owned();
        self.with(move |client| async move {
            let row = client
                .query_opt(
                    "SELECT origin, refresh_token, access_token, expires_at_ms, updated_ms
                     FROM credentials WHERE key = $1",
                    &[&key],
                )
                .await
                .map_err(pg_error)?;
            Ok(row.map(|row| StoredCredential {
                origin: row.get(0),
                refresh_token: Secret::from(row.get::<_, String>(1)),
                access_token: Secret::from(row.get::<_, String>(2)),
                expires_at_ms: row.get(3),
                refreshed_ms: row.get(4),
            }))
        })
        .await
    }

    async fn save_credential(
        &self,
        key: &str,
        credential: &StoredCredential,
    ) -> Result<(), StoreError> {
        let key = key.to_owned();
        let credential = credential.clone();
        self.with(move |client| async move {
            client
                .execute(
                    "INSERT INTO credentials (key, origin, refresh_token, access_token, expires_at_ms, updated_ms)
                     VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (key) DO UPDATE SET origin = EXCLUDED.origin,
                         refresh_token = EXCLUDED.refresh_token, access_token = EXCLUDED.access_token,
                         expires_at_ms = EXCLUDED.expires_at_ms, updated_ms = EXCLUDED.updated_ms",
                    &[
                        &key,
                        &credential.origin,
                        &credential.refresh_token.expose(),
                        &credential.access_token.expose(),
                        &credential.expires_at_ms,
                        &credential.refreshed_ms,
                    ],
                )
                .await
                .map(drop)
                .map_err(pg_error)
        })
        .await
    }

    async fn purge_settled(&self, older_than_ms: i64, max_rows: u64) -> Result<u64, StoreError> {
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
                .await
                .map_err(pg_error)?;
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
                .await
                .map_err(pg_error)?;
            Ok(records + deliveries)
        })
        .await
    }

    async fn admit_call(
        &self,
        limit: u32,
        window: Duration,
    ) -> Result<Result<Option<i64>, Duration>, StoreError> {
        let (limit, window) = (
            i32::try_from(limit).unwrap_or(i32::MAX),
            duration_ms(window),
        );
        self.with(move |client| async move {
            let row = client
                .query_one(
                    "SELECT call, wait_ms FROM relay_admit_hubspot_call($1, $2, $3)",
                    &[&limit, &window, &(window + duration_ms(LOST_CALL))],
                )
                .await
                .map_err(pg_error)?;
            Ok(match row.get::<_, Option<i64>>(0) {
                Some(call) => Ok(Some(call)),
                None => Err(Duration::from_millis(
                    u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
                )),
            })
        })
        .await
    }

    async fn call_answered(&self, call: i64) -> Result<u32, StoreError> {
        self.with(move |client| async move {
            // The count does not depend on this call's update: it is in the window either way.
            let row = client
                .query_one(
                    "WITH answered AS (
                         UPDATE hubspot_calls
                         SET answered_ms = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                         WHERE id = $1)
                     SELECT COUNT(*) FROM hubspot_calls",
                    &[&call],
                )
                .await
                .map_err(pg_error)?;
            Ok(u32::try_from(row.get::<_, i64>(0)).unwrap_or(u32::MAX))
        })
        .await
    }

    async fn hold_calls(&self, pause: Duration) -> Result<(), StoreError> {
        let pause = duration_ms(pause);
        self.with(move |client| async move {
            client
                .execute(
                    "INSERT INTO hubspot_pause (id, not_before_ms)
                     VALUES (1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint + $1)
                     ON CONFLICT (id) DO UPDATE
                     SET not_before_ms = GREATEST(hubspot_pause.not_before_ms, EXCLUDED.not_before_ms)",
                    &[&pause],
                )
                .await
                .map(drop)
                .map_err(pg_error)
        })
        .await
    }

    async fn lock_credential(&self, key: &str) -> Result<CredentialLock, StoreError> {
        let key = key.to_owned();
        let runtime = self.runtime.get().handle().clone();
        let pool = self.pool.clone();
        // Waiting for another replica's refresh may take its token endpoint's time.
        let task = self.runtime.get().spawn(async move {
            let client = pool.get().await.map_err(pool_error)?;
            client
                .execute("SELECT pg_advisory_lock(hashtext($1))", &[&key])
                .await
                .map_err(pg_error)?;
            Ok::<_, StoreError>(AdvisoryLock {
                client: Some(client),
                key,
                runtime,
            })
        });
        let held = task.await.map_err(|_| StoreError::Closed)??;
        Ok(CredentialLock {
            _held: Some(Box::new(held)),
        })
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
