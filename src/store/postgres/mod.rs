//! PostgreSQL store, for several replicas sharing one queue. Work runs on a
//! small runtime of the store's own (the HTTP workers each have a
//! single-threaded one); connections come from a deadpool pool. Concurrent
//! ingests are committed together by one writer task (group commit), the
//! database's clock decides due times and leases, and claims take whole
//! groups with `FOR UPDATE SKIP LOCKED`, so two replicas never take the same
//! record.

mod call_window;
mod connect;
mod credentials;
mod deliveries;
mod ingest;
mod operator;
mod queue;
mod schema;

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Row, error::SqlState};

use super::{IngestOutcome, OpenError, RecordStatus, StoreError, StoreOptions, StoredRecord};
use crate::record::{Delivery, EventInfo, NewRecord, State};
use ingest::insert_deliveries;

/// A database that does not answer within this fails the operation (503 on
/// ingest) instead of holding a webhook past the platform's own timeout.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(4);
/// Most ingests one transaction takes.
const MAX_GROUP: usize = 256;
const QUEUE_DEPTH: usize = 4096;
/// PostgreSQL's errors in the store's kinds, for every call's `?`: a lost
/// connection, a lock or a server going away may pass; the rest is broken.
impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        let transient_code = err.code().is_some_and(|code| {
            let class = &code.code()[..2];
            matches!(class, "08" | "40" | "53" | "57" | "58")
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::QUERY_CANCELED
        });
        if err.is_closed() || transient_code || err.as_db_error().is_none() {
            StoreError::Unavailable(connect::chain(&err))
        } else {
            StoreError::Broken(format!("database error: {}", connect::chain(&err)))
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(err) => err.into(),
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            other => StoreError::Unavailable(other.to_string()),
        }
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
    /// Group commits of ingests.
    commits: Arc<AtomicU64>,
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
        let commits = Arc::new(AtomicU64::new(0));
        let writer = runtime.get().spawn(run_writer(
            pool.clone(),
            inbox,
            Arc::clone(&writer_alive),
            Arc::clone(&commits),
        ));
        Ok(Self {
            runtime,
            pool,
            ingests: Mutex::new(Some(ingests)),
            writer: Mutex::new(Some(writer)),
            writer_alive,
            commits,
        })
    }

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
                let client = pool.get().await?;
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

/// The database's clock, in epoch milliseconds.
async fn db_now(client: &impl GenericClient) -> Result<i64, StoreError> {
    Ok(client
        .query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )
        .await?
        .get(0))
}

/// Commits whatever ingests queued up meanwhile in one transaction.
async fn run_writer(
    pool: Pool,
    mut inbox: mpsc::Receiver<IngestJob>,
    alive: Arc<AtomicBool>,
    commits: Arc<AtomicU64>,
) {
    while let Some(first) = inbox.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let committed =
            tokio::time::timeout(OPERATION_TIMEOUT, commit_group(&pool, &group, &commits))
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
    commits: &AtomicU64,
) -> Result<Vec<Result<IngestOutcome, StoreError>>, StoreError> {
    let mut client = pool.get().await?;
    let jobs: Vec<(&Delivery, &[NewRecord])> = group
        .iter()
        .map(|(delivery, records, _)| (delivery, &records[..]))
        .collect();
    let tx = client.transaction().await?;
    match insert_deliveries(&tx, &jobs).await {
        Ok(outcomes) => {
            tx.commit().await?;
            commits.fetch_add(1, Ordering::SeqCst);
            return Ok(outcomes.into_iter().map(Ok).collect());
        }
        Err(StoreError::Broken(err)) => {
            tracing::warn!(error = %err, "a delivery cannot be stored: storing its group one by one");
            tx.rollback().await?;
        }
        Err(err) => return Err(err),
    }
    let mut tx = client.transaction().await?;
    let mut outcomes = Vec::with_capacity(jobs.len());
    for job in &jobs {
        let savepoint = tx.savepoint("job").await?;
        let outcome = insert_deliveries(&savepoint, std::slice::from_ref(job)).await;
        match outcome {
            Ok(_) => savepoint.commit().await?,
            Err(_) => savepoint.rollback().await?,
        }
        outcomes.push(outcome.map(|mut one| one.remove(0)));
    }
    tx.commit().await?;
    commits.fetch_add(1, Ordering::SeqCst);
    Ok(outcomes)
}

/// A row of [`RECORD_COLUMNS`](super::RECORD_COLUMNS).
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
        request_id: row.get(18),
    })
}

fn to_records(rows: &[Row]) -> Result<Vec<StoredRecord>, StoreError> {
    rows.iter().map(to_record).collect()
}
