//! Embedded SQLite store. One writer thread owns the write connection and
//! commits whatever jobs have queued up in one transaction (group commit), so
//! many concurrent webhooks share one fsync. Reads use their own connection
//! (WAL lets them run beside the writer) and the WAL is checkpointed by a
//! third thread, off the commit path.

use std::{
    path::Path,
    sync::{Arc, Mutex, mpsc as std_mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::{
    DeferredDelivery, FetchOutcome, IngestOutcome, QueueStats, RecordStatus, Settlement, Store,
    StoreError, StoredCredential, StoredRecord,
};
use crate::{
    record::{Delivery, EventInfo, NewRecord, State, now_ms},
    settings::Secret,
};

/// Most jobs one transaction takes; bounds the latency a single commit adds.
const MAX_GROUP: usize = 512;
/// Jobs that may wait for the writer before senders are slowed down.
const QUEUE_DEPTH: usize = 8192;
/// The checkpoint thread copies WAL frames into the database this often, so
/// little is left for the writer's catch-up below.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(5);
/// Under steady load the background checkpoint never sees the WAL's end (the
/// writer keeps appending), so SQLite never restarts the WAL and it grows
/// without bound. This often the writer itself checkpoints the few frames the
/// background one has not copied yet, which lets the next commit restart it.
const WAL_RESTART_EVERY: Duration = Duration::from_millis(200);
/// A locked database fails the write (503, the platform retries) after this
/// rather than holding the webhook past the platform's own timeout (Zoom: 3 s).
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS deliveries (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    dedupe_key  BLOB    NOT NULL,
    received_ms INTEGER NOT NULL,
    body        BLOB    NOT NULL,
    -- 'done', or 'fetch' while its records are to be fetched, or 'failed'.
    status          TEXT    NOT NULL DEFAULT 'done',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    last_error      TEXT,
    UNIQUE (source, dedupe_key)
);
CREATE INDEX IF NOT EXISTS deliveries_to_fetch ON deliveries (next_attempt_ms) WHERE status = 'fetch';
CREATE TABLE IF NOT EXISTS records (
    id                  INTEGER PRIMARY KEY,
    delivery_id         INTEGER NOT NULL REFERENCES deliveries (id),
    dedupe_key          BLOB    NOT NULL,
    source              TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    email               TEXT    NOT NULL,
    first_name          TEXT,
    last_name           TEXT,
    vid                 INTEGER,
    external_event_id   TEXT    NOT NULL,
    external_account_id TEXT    NOT NULL,
    interaction_ms      INTEGER NOT NULL,
    properties          TEXT    NOT NULL,
    event_info          TEXT,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms     INTEGER NOT NULL,
    leased_until_ms     INTEGER,
    last_error          TEXT,
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_status ON records (status, next_attempt_ms);
-- Record dedupe and the join look-up of a participant_left share one index:
-- every webhook dirties one page per random-keyed index, and those pages are
-- most of what a commit writes.
CREATE UNIQUE INDEX IF NOT EXISTS records_by_contact ON records (external_event_id, email, dedupe_key);
CREATE INDEX IF NOT EXISTS records_by_delivery ON records (delivery_id);
CREATE TABLE IF NOT EXISTS credentials (
    key           TEXT PRIMARY KEY,
    origin        TEXT    NOT NULL,
    refresh_token TEXT    NOT NULL,
    access_token  TEXT    NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// Version of [`SCHEMA`], kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// From the first release's schema, which left `user_version` at 0; [`SCHEMA`]
/// then adds what is missing.
const FROM_FIRST_RELEASE: &str = r#"
ALTER TABLE deliveries ADD COLUMN status TEXT NOT NULL DEFAULT 'done';
ALTER TABLE deliveries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN next_attempt_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
ALTER TABLE records ADD COLUMN leased_until_ms INTEGER;
DROP INDEX records_by_contact;
"#;

/// Brings the database to [`SCHEMA_VERSION`] in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let populated: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records')",
        [],
        |row| row.get(0),
    )?;
    let tx = conn.transaction()?;
    match (version, populated) {
        (SCHEMA_VERSION, _) | (0, false) => {}
        (0, true) => tx.execute_batch(FROM_FIRST_RELEASE)?,
        (newer, _) => return Err(StoreError::NewerSchema(newer, SCHEMA_VERSION)),
    }
    tx.execute_batch(SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs inside the group transaction (`None`: the transaction could not begin,
/// so the job must not run); the returned reply learns whether it committed.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

enum Msg {
    Job(Job),
    Stop,
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Msg>,
    reader: Arc<Mutex<Connection>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl SqliteStore {
    pub fn open(path: &str) -> Result<Self, StoreError> {
        if let Some(dir) = Path::new(path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut writer = Connection::open(path)?;
        // FULL: every commit fsyncs the WAL, so an acknowledged webhook survives power loss.
        writer.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA foreign_keys = ON;",
        )?;
        writer.busy_timeout(BUSY_TIMEOUT)?;
        migrate(&mut writer)?;
        // One process owns an SQLite store, so a lease left from before this
        // start belongs to a forwarder that died mid-call: due again now.
        writer.execute(
            // Only pending records carry leases; the status index finds them.
            "UPDATE records SET leased_until_ms = NULL
             WHERE status = 'pending' AND leased_until_ms IS NOT NULL",
            [],
        )?;

        let reader = Connection::open(path)?;
        reader.busy_timeout(BUSY_TIMEOUT)?;
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(BUSY_TIMEOUT)?;

        let (jobs, inbox) = mpsc::channel(QUEUE_DEPTH);
        let (stop_checkpoints, checkpoint_stop) = std_mpsc::channel::<()>();
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                run_writer(&writer, inbox);
                drop(stop_checkpoints);
            })?;
        let checkpoint_thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpoints(&checkpointer, &checkpoint_stop))?;

        Ok(Self {
            jobs,
            reader: Arc::new(Mutex::new(reader)),
            threads: Mutex::new(vec![writer_thread, checkpoint_thread]),
        })
    }

    /// Runs `f` in the next group transaction; resolves once that transaction
    /// has committed (and fsync'd) or failed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = conn.map(|conn| in_savepoint(conn, f));
            Box::new(move |committed: Result<(), StoreError>| {
                let _ = tx.send(committed.and_then(|()| result.expect("ran when the group began")));
            })
        });
        self.jobs
            .send(Msg::Job(job))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || {
            let conn = reader
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// One job's writes are undone alone if it fails, without sinking the group.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job")?;
    match f(conn) {
        Ok(value) => {
            conn.execute_batch("RELEASE job")?;
            Ok(value)
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(err)
        }
    }
}

fn run_writer(conn: &Connection, mut inbox: mpsc::Receiver<Msg>) {
    let mut stopping = false;
    let mut last_restart = Instant::now();
    while !stopping {
        let Some(first) = inbox.blocking_recv() else {
            break;
        };
        let mut group = Vec::new();
        match first {
            Msg::Job(job) => group.push(job),
            Msg::Stop => break,
        }
        while group.len() < MAX_GROUP {
            match inbox.try_recv() {
                Ok(Msg::Job(job)) => group.push(job),
                Ok(Msg::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(conn, group);
        if last_restart.elapsed() >= WAL_RESTART_EVERY && wal_caught_up(conn) {
            last_restart = Instant::now();
        }
    }
    inbox.close();
    // Jobs queued after the stop get `Closed` when their reply channel drops.
    while let Ok(msg) = inbox.try_recv() {
        drop(msg);
    }
}

fn commit_group(conn: &Connection, group: Vec<Job>) {
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        let reason = err.to_string();
        tracing::error!(%reason, "store cannot begin a transaction");
        for job in group {
            job(None)(Err(StoreError::Commit(reason.clone())));
        }
        return;
    }
    let replies: Vec<Reply> = group.into_iter().map(|job| job(Some(conn))).collect();
    let committed = conn.execute_batch("COMMIT").map_err(|err| err.to_string());
    if committed.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for reply in replies {
        reply(committed.clone().map_err(StoreError::Commit));
    }
}

/// Checkpoints what the background thread has not copied yet; true when the
/// whole WAL is in the database (the next commit then restarts the WAL).
/// False while the background checkpoint holds the lock: try after the next commit.
fn wal_caught_up(conn: &Connection) -> bool {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((
            row.get::<_, i64>(0)?,
            row.get::<_, i64>(1)?,
            row.get::<_, i64>(2)?,
        ))
    });
    match result {
        Ok((busy, log, copied)) => busy == 0 && log == copied,
        Err(err) => {
            tracing::warn!(error = %err, "WAL checkpoint failed");
            true
        }
    }
}

fn run_checkpoints(conn: &Connection, stop: &std_mpsc::Receiver<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(err) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
            tracing::warn!(error = %err, "WAL checkpoint failed");
        }
    }
    if let Err(err) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
        tracing::warn!(error = %err, "final WAL checkpoint failed");
    }
}

fn insert_delivery(
    conn: &Connection,
    delivery: &Delivery,
    records: &[NewRecord],
) -> Result<IngestOutcome, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO deliveries (source, dedupe_key, received_ms, body, status, next_attempt_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?3)
             ON CONFLICT (source, dedupe_key) DO NOTHING",
        )?
        .execute(params![
            delivery.source,
            &delivery.key[..],
            delivery.received_ms,
            delivery.body,
            if delivery.deferred { "fetch" } else { "done" },
        ])?;
    if inserted == 0 {
        return Ok(IngestOutcome {
            duplicate_delivery: true,
            fresh: vec![false; records.len()],
        });
    }
    let fresh = insert_records(
        conn,
        conn.last_insert_rowid(),
        delivery.source,
        delivery.received_ms,
        records,
    )?;
    Ok(IngestOutcome {
        duplicate_delivery: false,
        fresh,
    })
}

/// Stores a delivery's records; per record, whether it was new.
fn insert_records(
    conn: &Connection,
    delivery_id: i64,
    source: &str,
    received_ms: i64,
    records: &[NewRecord],
) -> Result<Vec<bool>, StoreError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO records (delivery_id, dedupe_key, source, state, email, first_name, last_name, vid,
             external_event_id, external_account_id, interaction_ms, properties, event_info, status,
             next_attempt_ms, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?15)
         ON CONFLICT (external_event_id, email, dedupe_key) DO NOTHING",
    )?;
    let fresh = records
        .iter()
        .map(|record| {
            let properties =
                serde_json::to_string(&record.properties).expect("string map serializes");
            let event_info = record
                .event
                .as_ref()
                .map(|e| serde_json::to_string(e).expect("serializes"));
            insert
                .execute(params![
                    delivery_id,
                    &record.dedupe_key(source)[..],
                    source,
                    record.state.as_str(),
                    record.email,
                    record.first_name,
                    record.last_name,
                    record.vid,
                    record.external_event_id,
                    record.external_account_id,
                    record.interaction_ms,
                    properties,
                    event_info,
                    RecordStatus::initial(record).as_str(),
                    received_ms,
                ])
                .map(|n| n == 1)
        })
        .collect::<Result<_, _>>()?;
    Ok(fresh)
}

fn settle_fetch(
    conn: &Connection,
    id: i64,
    source: &str,
    outcome: &FetchOutcome,
) -> Result<IngestOutcome, StoreError> {
    let (status, next_attempt, error) = match outcome {
        FetchOutcome::Resolved(records) => {
            let fresh = insert_records(conn, id, source, now_ms(), records)?;
            conn.prepare_cached(
                "UPDATE deliveries SET status = 'done', attempts = attempts + 1, last_error = NULL
                 WHERE id = ?1",
            )?
            .execute(params![id])?;
            return Ok(IngestOutcome {
                duplicate_delivery: false,
                fresh,
            });
        }
        FetchOutcome::Retry { at_ms, error } => ("fetch", Some(*at_ms), error),
        FetchOutcome::Failed { reason } => ("failed", None, reason),
    };
    conn.prepare_cached(
        "UPDATE deliveries SET status = ?2, attempts = attempts + 1,
             next_attempt_ms = COALESCE(?3, next_attempt_ms), last_error = ?4
         WHERE id = ?1",
    )?
    .execute(params![id, status, next_attempt, error])?;
    Ok(IngestOutcome::default())
}

/// Columns [`row_to_record`] reads, in its order.
const RECORD_COLUMNS: &str = "id, source, state, status, email, first_name, last_name, vid,
    external_event_id, external_account_id, interaction_ms, properties, event_info,
    attempts, created_ms, next_attempt_ms, last_error";

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let text_err = |i, msg: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.into())
    };
    let state: String = row.get(2)?;
    let status: String = row.get(3)?;
    let properties: String = row.get(11)?;
    let event_info: Option<String> = row.get(12)?;
    Ok(StoredRecord {
        id: row.get(0)?,
        source: row.get(1)?,
        status: RecordStatus::parse(&status)
            .ok_or_else(|| text_err(3, format!("status {status}")))?,
        attempts: row.get(13)?,
        created_ms: row.get(14)?,
        next_attempt_ms: row.get(15)?,
        last_error: row.get(16)?,
        record: NewRecord {
            state: State::parse(&state).ok_or_else(|| text_err(2, format!("state {state}")))?,
            email: row.get(4)?,
            first_name: row.get(5)?,
            last_name: row.get(6)?,
            vid: row.get(7)?,
            external_event_id: row.get(8)?,
            external_account_id: row.get(9)?,
            interaction_ms: row.get(10)?,
            properties: serde_json::from_str(&properties)
                .map_err(|e| text_err(11, e.to_string()))?,
            event: event_info
                .map(|json| serde_json::from_str::<EventInfo>(&json))
                .transpose()
                .map_err(|e| text_err(12, e.to_string()))?,
            sender_id: None,
        },
    })
}

fn settle_one(
    conn: &Connection,
    id: i64,
    outcome: &Settlement,
    now: i64,
) -> rusqlite::Result<usize> {
    let (status, next_attempt, error) = match outcome {
        Settlement::Delivered => ("delivered", None, None),
        Settlement::Retry { at_ms, error } => ("pending", Some(*at_ms), Some(error.as_str())),
        Settlement::Dead { reason } => ("dead", None, Some(reason.as_str())),
        Settlement::Release => {
            return conn
                .prepare_cached(
                    "UPDATE records SET leased_until_ms = NULL, attempts = MAX(attempts - 1, 0)
                     WHERE id = ?1",
                )?
                .execute(params![id]);
        }
    };
    conn.prepare_cached(
        "UPDATE records SET status = ?2, next_attempt_ms = COALESCE(?3, next_attempt_ms),
             last_error = COALESCE(?4, last_error), leased_until_ms = NULL, updated_ms = ?5
         WHERE id = ?1",
    )?
    .execute(params![id, status, next_attempt, error, now])
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(
        &self,
        delivery: Delivery,
        records: Vec<NewRecord>,
    ) -> Result<IngestOutcome, StoreError> {
        self.write(move |conn| insert_delivery(conn, &delivery, &records))
            .await
    }

    async fn open_join_time(
        &self,
        source: &str,
        external_event_id: &str,
        email: &str,
        at_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let (source, event, email) = (
            source.to_owned(),
            external_event_id.to_owned(),
            email.to_owned(),
        );
        self.read(move |conn| {
            let joined = conn
                .prepare_cached(
                    "SELECT MAX(interaction_ms) FROM records
                     WHERE external_event_id = ?1 AND email = ?2 AND source = ?3 AND state = 'attend'
                       AND interaction_ms <= ?4
                       AND json_extract(properties, '$.joinedAt') IS NOT NULL
                       AND json_extract(properties, '$.leftAt') IS NULL",
                )?
                .query_row(params![event, email, source, at_ms], |row| row.get(0))
                .optional()?;
            Ok(joined.flatten())
        })
        .await
    }

    async fn check_writable(&self) -> Result<(), StoreError> {
        self.write(|conn| {
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES ('heartbeat', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![now_ms().to_string()])?;
            Ok(())
        })
        .await
    }

    async fn queue_stats(&self) -> Result<QueueStats, StoreError> {
        self.read(|conn| {
            let by_status = conn
                .prepare_cached("SELECT status, COUNT(*) FROM records GROUP BY status")?
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })?
                .filter_map(|row| match row {
                    Ok((status, n)) => RecordStatus::parse(&status).map(|s| Ok((s, n))),
                    Err(err) => Some(Err(err)),
                })
                .collect::<Result<_, _>>()?;
            let oldest_pending_ms = conn
                .prepare_cached("SELECT MIN(created_ms) FROM records WHERE status = 'pending'")?
                .query_row([], |row| row.get(0))?;
            Ok(QueueStats {
                by_status,
                oldest_pending_ms,
            })
        })
        .await
    }

    async fn records(
        &self,
        status: Option<RecordStatus>,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE ?1 IS NULL OR status = ?1 ORDER BY id LIMIT ?2"
                ))?
                .query_map(
                    params![status.map(RecordStatus::as_str), limit],
                    row_to_record,
                )?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn due(&self, now_ms: i64, limit: i64) -> Result<Vec<StoredRecord>, StoreError> {
        self.read(move |conn| {
            let rows = conn
                .prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM records
                     WHERE status = 'pending' AND next_attempt_ms <= ?1
                       AND (leased_until_ms IS NULL OR leased_until_ms <= ?1)
                     ORDER BY next_attempt_ms, id LIMIT ?2"
                ))?
                .query_map(params![now_ms, limit], row_to_record)?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }

    async fn claim(
        &self,
        ids: &[i64],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let ids = ids.to_vec();
        self.write(move |conn| {
            let mut claim = conn.prepare_cached(
                "UPDATE records SET leased_until_ms = ?3, attempts = attempts + 1
                 WHERE id = ?1 AND status = 'pending'
                   AND (leased_until_ms IS NULL OR leased_until_ms <= ?2)",
            )?;
            let mut claimed = Vec::with_capacity(ids.len());
            for id in ids {
                if claim.execute(params![id, now_ms, lease_until_ms])? == 1 {
                    claimed.push(id);
                }
            }
            Ok(claimed)
        })
        .await
    }

    async fn settle(&self, outcomes: Vec<(i64, Settlement)>) -> Result<(), StoreError> {
        self.write(move |conn| {
            let now = now_ms();
            for (id, outcome) in &outcomes {
                settle_one(conn, *id, outcome, now)?;
            }
            Ok(())
        })
        .await
    }

    async fn due_deliveries(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<DeferredDelivery>, StoreError> {
        self.read(move |conn| {
            let due = conn
                .prepare_cached(
                    "SELECT id, source, body, attempts, received_ms FROM deliveries
                     WHERE status = 'fetch' AND next_attempt_ms <= ?1
                     ORDER BY next_attempt_ms, id LIMIT ?2",
                )?
                .query_map(params![now_ms, limit], |row| {
                    Ok(DeferredDelivery {
                        id: row.get(0)?,
                        source: row.get(1)?,
                        body: row.get(2)?,
                        attempts: row.get(3)?,
                        received_ms: row.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(due)
        })
        .await
    }

    async fn settle_delivery(
        &self,
        delivery: &DeferredDelivery,
        outcome: FetchOutcome,
    ) -> Result<IngestOutcome, StoreError> {
        let (id, source) = (delivery.id, delivery.source.clone());
        self.write(move |conn| settle_fetch(conn, id, &source, &outcome))
            .await
    }

    async fn load_credential(&self, key: &str) -> Result<Option<StoredCredential>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            let credential = conn
                .prepare_cached(
                    "SELECT origin, refresh_token, access_token, expires_at_ms FROM credentials
                     WHERE key = ?1",
                )?
                .query_row(params![key], |row| {
                    Ok(StoredCredential {
                        origin: row.get(0)?,
                        refresh_token: Secret::from(row.get::<_, String>(1)?),
                        access_token: Secret::from(row.get::<_, String>(2)?),
                        expires_at_ms: row.get(3)?,
                    })
                })
                .optional()?;
            Ok(credential)
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
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO credentials (key, origin, refresh_token, access_token, expires_at_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (key) DO UPDATE SET origin = excluded.origin,
                     refresh_token = excluded.refresh_token, access_token = excluded.access_token,
                     expires_at_ms = excluded.expires_at_ms, updated_ms = excluded.updated_ms",
            )?
            .execute(params![
                key,
                credential.origin,
                credential.refresh_token.expose(),
                credential.access_token.expose(),
                credential.expires_at_ms,
                now_ms(),
            ])?;
            Ok(())
        })
        .await
    }

    async fn purge_settled(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        self.write(move |conn| {
            let records = conn.execute(
                "DELETE FROM records WHERE status IN ('delivered', 'dead', 'unmappable') AND updated_ms < ?1",
                params![older_than_ms],
            )?;
            let deliveries = conn.execute(
                "DELETE FROM deliveries WHERE received_ms < ?1 AND status != 'fetch'
                   AND NOT EXISTS (SELECT 1 FROM records WHERE records.delivery_id = deliveries.id)",
                params![older_than_ms],
            )?;
            Ok((records + deliveries) as u64)
        })
        .await
    }

    async fn close(&self) {
        let _ = self.jobs.send(Msg::Stop).await;
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}
