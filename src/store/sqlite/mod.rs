//! Embedded SQLite store. One writer thread owns the write connection and
//! commits whatever jobs have queued up in one transaction (group commit), so
//! many concurrent webhooks share one fsync. Reads use a small pool of their
//! own connections (WAL lets them run beside the writer), and the WAL is
//! checkpointed by another thread, off the commit path.

mod call_window;
mod credentials;
mod deliveries;
mod ingest;
mod operator;
mod queue;
mod schema;

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc as std_mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rusqlite::{Connection, ErrorCode};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{OpenError, RECORD_COLUMNS, RecordStatus, StoreError, StoredRecord};
use crate::record::{EventInfo, NewRecord, State, now_ms};

/// Most jobs one transaction takes; bounds the latency a single commit adds.
const MAX_GROUP: usize = 512;
/// Jobs that may wait for the writer before senders are slowed down (their
/// bodies are bounded by the HTTP layer's in-flight budget).
const QUEUE_DEPTH: usize = 8192;
/// Reader connections: metrics, inspection and credential reads never queue
/// behind each other's slow read.
const READERS: usize = 4;
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

/// SQLite's errors in the store's kinds: what may pass (locked, full, I/O)
/// is unavailable, the rest is broken.
fn sql_error(err: rusqlite::Error) -> StoreError {
    let transient = matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::DiskFull
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::OutOfMemory
        )
    );
    if transient {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Broken(format!("database error: {err}"))
    }
}

type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// Runs inside the group transaction (`None`: the transaction could not begin,
/// so the job must not run); the returned reply learns whether it committed.
type Job = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

enum Msg {
    Job(Job),
    Stop,
}

/// Reader connections handed out one per read.
struct Readers {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
}

pub struct SqliteStore {
    jobs: mpsc::Sender<Msg>,
    readers: Arc<Readers>,
    writer_alive: Arc<AtomicBool>,
    /// Transactions the writer committed.
    commits: Arc<AtomicU64>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Marks the writer dead however its thread ends, a panic included.
struct AliveWhileHeld(Arc<AtomicBool>);

impl Drop for AliveWhileHeld {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

fn connect(path: &str) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(sql_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_error)?;
    Ok(conn)
}

/// The writer's connection, refused unless the file can be written.
fn open_writable(path: &str) -> Result<Connection, StoreError> {
    if let Some(dir) = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|err| StoreError::Broken(format!("cannot create {}: {err}", dir.display())))?;
    }
    // SQLite would open a file it may not write read-only, without an error.
    if Path::new(path).exists() {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|err| StoreError::Broken(format!("cannot open it for writing: {err}")))?;
    }
    let writer = connect(path)?;
    // FULL: every commit fsyncs the WAL, so an acknowledged webhook survives power loss.
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA foreign_keys = ON;",
        )
        .map_err(sql_error)?;
    Ok(writer)
}

impl SqliteStore {
    pub fn open(path: &str) -> Result<Self, OpenError> {
        let mut writer = open_writable(path).map_err(|err| {
            OpenError::Failed(format!(
                "cannot write the SQLite database {path} ({err}): the gateway's user must be able \
                 to create and write it, the -wal and -shm files beside it and its folder \
                 (mount a writable volume there)"
            ))
        })?;
        schema::migrate(&mut writer)?;

        let readers = (0..READERS)
            .map(|_| connect(path))
            .collect::<Result<Vec<_>, _>>()?;
        let checkpointer = connect(path)?;
        let (jobs, inbox) = mpsc::channel(QUEUE_DEPTH);
        let (stop_checkpoints, checkpoint_stop) = std_mpsc::channel::<()>();
        let writer_alive = Arc::new(AtomicBool::new(true));
        let alive = AliveWhileHeld(Arc::clone(&writer_alive));
        let commits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&commits);
        let spawn_failed = |err: std::io::Error| OpenError::Failed(format!("cannot start: {err}"));
        let writer_thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                let _alive = alive;
                run_writer(&writer, inbox, &counted);
                drop(stop_checkpoints);
            })
            .map_err(spawn_failed)?;
        let checkpoint_thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run_checkpoints(&checkpointer, &checkpoint_stop))
            .map_err(spawn_failed)?;

        Ok(Self {
            jobs,
            readers: Arc::new(Readers {
                idle: Mutex::new(readers),
                permits: Semaphore::new(READERS),
            }),
            writer_alive,
            commits,
            threads: Mutex::new(vec![writer_thread, checkpoint_thread]),
        })
    }

    /// Runs `f` in the next group transaction; resolves once that transaction
    /// has committed (and fsync'd) or failed.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let result = conn.map(|conn| in_savepoint(conn, |conn| f(conn, now_ms())));
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
        let readers = Arc::clone(&self.readers);
        let _permit = readers
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let conn = readers
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop()
            .ok_or(StoreError::Closed)?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let result = f(&conn);
            (conn, result)
        })
        .await
        .map_err(|_| StoreError::Closed)?;
        readers
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(conn);
        result
    }
}

/// One job's writes are undone alone if it fails, without sinking the group.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    conn.execute_batch("SAVEPOINT job").map_err(sql_error)?;
    match f(conn) {
        Ok(value) => {
            conn.execute_batch("RELEASE job").map_err(sql_error)?;
            Ok(value)
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK TO job; RELEASE job");
            Err(err)
        }
    }
}

fn run_writer(conn: &Connection, mut inbox: mpsc::Receiver<Msg>, commits: &AtomicU64) {
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
        commit_group(conn, group, commits);
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

fn commit_group(conn: &Connection, group: Vec<Job>, commits: &AtomicU64) {
    if let Err(err) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = sql_error(err);
        tracing::error!(error = %err, "store cannot begin a transaction");
        for job in group {
            job(None)(Err(err.clone()));
        }
        return;
    }
    let replies: Vec<Reply> = group.into_iter().map(|job| job(Some(conn))).collect();
    let committed = conn.execute_batch("COMMIT").map_err(sql_error);
    match &committed {
        // Counted before anyone learns of the commit.
        Ok(()) => drop(commits.fetch_add(1, Ordering::SeqCst)),
        Err(err) => {
            tracing::error!(error = %err, "store cannot commit");
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    for reply in replies {
        reply(committed.clone());
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

/// A row of [`RECORD_COLUMNS`].
fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let text_err = |i, msg: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, msg.into())
    };
    let state: String = row.get(2)?;
    let status: String = row.get(3)?;
    let properties: String = row.get(11)?;
    let event_info: Option<String> = row.get(12)?;
    let status = RecordStatus::from_stored(&status)
        .ok_or_else(|| text_err(3, format!("status {status}")))?;
    Ok(StoredRecord {
        id: row.get(0)?,
        source: row.get(1)?,
        status,
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
            properties: serde_json::from_str::<BTreeMap<String, String>>(&properties)
                .map_err(|e| text_err(11, e.to_string()))?,
            event: event_info
                .map(|json| serde_json::from_str::<EventInfo>(&json))
                .transpose()
                .map_err(|e| text_err(12, e.to_string()))?,
            sender_id: None,
            participant: row.get(17)?,
            closes_session: false,
        },
        request_id: row.get(18)?,
    })
}
