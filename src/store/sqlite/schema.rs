//! The SQLite schema and its migrations from every earlier release: an
//! ordered list of steps, each from one version to the next.

use rusqlite::Connection;

use super::sql_error;
use crate::store::StoreError;

/// Version of [`SCHEMA`], kept in `PRAGMA user_version`: the last step's.
pub const SCHEMA_VERSION: i64 = STEPS[STEPS.len() - 1].0;

pub const SCHEMA: &str = concat!(
    r#"
-- Every delivery as received: an append-only log (record identity, not the
-- delivery, decides what is a duplicate).
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    source          TEXT    NOT NULL,
    received_ms     INTEGER NOT NULL,
    body            BLOB    NOT NULL,
    -- 'done'; or 'fetch' while its records are to be fetched ('fetching' under
    -- a lease), 'failed' when they cannot be.
    status          TEXT    NOT NULL DEFAULT 'done',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER,
    leased_until_ms INTEGER,
    lease_owner     TEXT,
    last_error      TEXT,
    updated_ms      INTEGER,
    -- The request that brought it (NULL: stored before request ids).
    request_id      TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_owed ON deliveries (status, next_attempt_ms)
    WHERE status != 'done';
-- One row per HubSpot `create` path; records point at theirs so the queue
-- index keeps each group's records together.
CREATE TABLE IF NOT EXISTS groups (
    id                  INTEGER PRIMARY KEY,
    external_account_id TEXT NOT NULL,
    external_event_id   TEXT NOT NULL,
    state               TEXT NOT NULL,
    UNIQUE (external_account_id, external_event_id, state)
);
CREATE TABLE IF NOT EXISTS records (
    id                  INTEGER PRIMARY KEY,
    delivery_id         INTEGER NOT NULL REFERENCES deliveries (id),
    group_id            INTEGER NOT NULL REFERENCES groups (id),
    dedupe_key          BLOB    NOT NULL,
    source              TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    email               TEXT    NOT NULL,
    first_name          TEXT,
    last_name           TEXT,
    vid                 INTEGER,
    participant         TEXT,
    external_event_id   TEXT    NOT NULL,
    external_account_id TEXT    NOT NULL,
    interaction_ms      INTEGER NOT NULL,
    properties          TEXT    NOT NULL,
    event_info          TEXT,
    -- pending, leased (pending and taken by a forwarder), unmappable, delivered, dead
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms     INTEGER NOT NULL,
    leased_until_ms     INTEGER,
    lease_owner         TEXT,
    last_error          TEXT,
    created_ms          INTEGER NOT NULL,
    updated_ms          INTEGER NOT NULL,
    -- A completion waits for the event's attendance records with lower ids:
    -- its own, or (after a late one arrived) up to this.
    covers_until        INTEGER
);
-- Record identity lives here and only here.
CREATE UNIQUE INDEX IF NOT EXISTS records_identity ON records (dedupe_key);
-- The join a leave closes.
CREATE INDEX IF NOT EXISTS records_by_contact ON records (external_event_id, email);
-- The forwarding queue, group by group, due first.
CREATE INDEX IF NOT EXISTS records_queue ON records (group_id, next_attempt_ms)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS records_leased ON records (leased_until_ms) WHERE status = 'leased';
CREATE INDEX IF NOT EXISTS records_by_status ON records (status);
CREATE INDEX IF NOT EXISTS records_settled ON records (updated_ms)
    WHERE status IN ('delivered', 'dead', 'unmappable');
CREATE INDEX IF NOT EXISTS records_by_delivery ON records (delivery_id);
CREATE INDEX IF NOT EXISTS records_completions ON records (id)
    WHERE state = 'complete' AND status = 'pending';
-- A late attendance record reopens its event's completion (`reopen_completion!`).
CREATE TRIGGER IF NOT EXISTS records_reopen_completion AFTER INSERT ON records
WHEN NEW.state = 'attend'
BEGIN
"#,
    reopen_completion!(),
    r#"
END;
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
"#
);

/// The first release (version 0) lacks the second's columns.
const FIRST_TO_SECOND: &str = r#"
ALTER TABLE deliveries ADD COLUMN status TEXT NOT NULL DEFAULT 'done';
ALTER TABLE deliveries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN next_attempt_ms INTEGER;
ALTER TABLE deliveries ADD COLUMN last_error TEXT;
ALTER TABLE records ADD COLUMN leased_until_ms INTEGER;
"#;

/// Version 2 to 3: both tables are rebuilt, because their unique constraints
/// (a table constraint in the first release) cannot be dropped otherwise.
/// Record identity becomes the dedupe key alone; records stored twice under
/// one identity by the old index (a generic `id` resent with another email)
/// keep their first copy, and a later copy still pending becomes a dead
/// letter that says so instead of being forwarded twice.
const SECOND_TO_THIRD: &str = r#"
ALTER TABLE deliveries RENAME TO deliveries_v2;
ALTER TABLE records RENAME TO records_v2;
DROP INDEX IF EXISTS records_by_status;
DROP INDEX IF EXISTS records_by_contact;
DROP INDEX IF EXISTS records_by_delivery;
DROP INDEX IF EXISTS deliveries_to_fetch;
"#;

const COPY_FROM_SECOND: &str = r#"
INSERT INTO deliveries (id, source, received_ms, body, status, attempts, next_attempt_ms, last_error, updated_ms)
    SELECT id, source, received_ms, body, status, attempts, next_attempt_ms, last_error, received_ms
    FROM deliveries_v2;
INSERT OR IGNORE INTO groups (external_account_id, external_event_id, state)
    SELECT DISTINCT external_account_id, external_event_id, state FROM records_v2;
INSERT INTO records (id, delivery_id, group_id, dedupe_key, source, state, email, first_name, last_name,
        vid, external_event_id, external_account_id, interaction_ms, properties, event_info, status,
        attempts, next_attempt_ms, last_error, created_ms, updated_ms)
    SELECT r.id, r.delivery_id, g.id,
        CASE WHEN first.id = r.id THEN r.dedupe_key ELSE r.dedupe_key || CAST(r.id AS BLOB) END,
        r.source, r.state, r.email, r.first_name, r.last_name, r.vid, r.external_event_id,
        r.external_account_id, r.interaction_ms, r.properties, r.event_info,
        CASE WHEN first.id != r.id AND r.status = 'pending' THEN 'dead' ELSE r.status END,
        r.attempts, r.next_attempt_ms,
        CASE WHEN first.id != r.id AND r.status = 'pending'
             THEN 'not forwarded: a later copy of record ' || first.id || ' (the same sender id)'
             ELSE r.last_error END,
        r.created_ms, r.updated_ms
    FROM records_v2 r
    JOIN groups g ON g.external_account_id = r.external_account_id
        AND g.external_event_id = r.external_event_id AND g.state = r.state
    JOIN (SELECT dedupe_key, MIN(id) AS id FROM records_v2 GROUP BY dedupe_key) first
        ON first.dedupe_key = r.dedupe_key;
DROP TABLE records_v2;
DROP TABLE deliveries_v2;
"#;

/// Brings a database of the version before it to the next.
type Step = fn(&Connection) -> Result<(), StoreError>;

/// The upgrades from every earlier release, in order: the version each
/// reaches, and how. No release had version 1.
const STEPS: [(i64, Step); 4] = [
    (2, |tx| run(tx, FIRST_TO_SECOND)),
    (3, |tx| {
        run(tx, SECOND_TO_THIRD)?;
        run(tx, SCHEMA)?;
        run(tx, COPY_FROM_SECOND)
    }),
    // Completions: the records schema gains `covers_until`.
    (4, |tx| add_column(tx, "records", "covers_until", "INTEGER")),
    (5, |tx| add_column(tx, "deliveries", "request_id", "TEXT")),
];

fn run(tx: &Connection, sql: &str) -> Result<(), StoreError> {
    tx.execute_batch(sql).map_err(sql_error)
}

/// Adds a column unless the table has it: the rebuild to version 3 creates
/// the tables as they are now, with every later step's columns.
fn add_column(tx: &Connection, table: &str, column: &str, kind: &str) -> Result<(), StoreError> {
    let present: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2)",
            [table, column],
            |row| row.get(0),
        )
        .map_err(sql_error)?;
    if present {
        return Ok(());
    }
    run(
        tx,
        &format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"),
    )
}

/// Brings the database to [`SCHEMA_VERSION`] in one transaction: a new one
/// gets [`SCHEMA`]; an earlier release's takes the steps after its version,
/// in order, then whatever of [`SCHEMA`] (indexes, triggers) it still lacks.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(sql_error)?;
    let populated: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records')",
            [],
            |row| row.get(0),
        )
        .map_err(sql_error)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Broken(format!(
            "the database has schema version {version}, newer than this gateway's \
             {SCHEMA_VERSION}: run a newer gateway"
        )));
    }
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    // Table rebuilds must not trip the foreign keys between the old tables;
    // the pragma only takes effect outside a transaction.
    conn.execute_batch("PRAGMA foreign_keys = OFF")
        .map_err(sql_error)?;
    let tx = conn.transaction().map_err(sql_error)?;
    if populated {
        for (_, step) in STEPS.iter().filter(|(to, _)| *to > version) {
            step(&tx)?;
        }
    }
    run(&tx, SCHEMA)?;
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)
        .map_err(sql_error)?;
    tx.commit().map_err(sql_error)?;
    conn.execute_batch("PRAGMA foreign_keys = ON")
        .map_err(sql_error)
}
