//! The PostgreSQL schema, versioned in `relay_schema`: an ordered list of
//! steps, each from one version to the next, applied at start under an
//! advisory lock so replicas starting at once migrate once.

use tokio_postgres::Client;

use crate::store::StoreError;

/// The last step's version.
pub const SCHEMA_VERSION: i32 = STEPS[STEPS.len() - 1].0;

/// Every step, in order: the version it reaches, and its statements. A new
/// database takes them all.
const STEPS: [(i32, &str); 4] = [
    (1, SCHEMA),
    (2, SHARED_WINDOW),
    (2, COMPLETIONS),
    (3, REQUEST_IDS),
];

/// Key of the advisory lock migrations hold ("relay" in ASCII).
const MIGRATION_LOCK: i64 = 0x72_65_6c_61_79;

/// The first release's tables.
const SCHEMA: &str = r#"
CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    source          TEXT   NOT NULL,
    received_ms     BIGINT NOT NULL,
    body            BYTEA  NOT NULL,
    status          TEXT   NOT NULL DEFAULT 'done',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT,
    leased_until_ms BIGINT,
    lease_owner     TEXT,
    last_error      TEXT,
    updated_ms      BIGINT
);
CREATE INDEX deliveries_owed ON deliveries (status, next_attempt_ms) WHERE status <> 'done';
CREATE TABLE groups (
    id                  BIGSERIAL PRIMARY KEY,
    external_account_id TEXT NOT NULL,
    external_event_id   TEXT NOT NULL,
    state               TEXT NOT NULL,
    UNIQUE (external_account_id, external_event_id, state)
);
CREATE TABLE records (
    id                  BIGSERIAL PRIMARY KEY,
    delivery_id         BIGINT NOT NULL REFERENCES deliveries (id),
    group_id            BIGINT NOT NULL REFERENCES groups (id),
    dedupe_key          BYTEA  NOT NULL,
    source              TEXT   NOT NULL,
    state               TEXT   NOT NULL,
    email               TEXT   NOT NULL,
    first_name          TEXT,
    last_name           TEXT,
    vid                 BIGINT,
    participant         TEXT,
    external_event_id   TEXT   NOT NULL,
    external_account_id TEXT   NOT NULL,
    interaction_ms      BIGINT NOT NULL,
    properties          TEXT   NOT NULL,
    event_info          TEXT,
    status              TEXT   NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms     BIGINT NOT NULL,
    leased_until_ms     BIGINT,
    lease_owner         TEXT,
    last_error          TEXT,
    created_ms          BIGINT NOT NULL,
    updated_ms          BIGINT NOT NULL
);
CREATE UNIQUE INDEX records_identity ON records (dedupe_key);
CREATE INDEX records_by_contact ON records (external_event_id, email);
CREATE INDEX records_queue ON records (group_id, next_attempt_ms) WHERE status = 'pending';
CREATE INDEX records_leased ON records (leased_until_ms) WHERE status = 'leased';
CREATE INDEX records_by_status ON records (status, id);
CREATE INDEX records_settled ON records (updated_ms)
    WHERE status IN ('delivered', 'dead', 'unmappable');
CREATE INDEX records_by_delivery ON records (delivery_id);
CREATE TABLE credentials (
    key           TEXT PRIMARY KEY,
    origin        TEXT   NOT NULL,
    refresh_token TEXT   NOT NULL,
    access_token  TEXT   NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#;

/// The deployment's HubSpot calls of the last window, and HubSpot's pause:
/// part of version 1 only from its second release on, so made where missing.
const SHARED_WINDOW: &str = r#"
CREATE TABLE IF NOT EXISTS hubspot_calls (
    id          BIGSERIAL PRIMARY KEY,
    started_ms  BIGINT NOT NULL,
    answered_ms BIGINT
);
CREATE TABLE IF NOT EXISTS hubspot_pause (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    not_before_ms BIGINT NOT NULL
);
"#;

/// Functions, replaced at every start: they are code, not data, and change
/// without a schema version.
const FUNCTIONS: &str = r#"
-- One round trip per call: admits it (`call`) or says how long to wait
-- (`wait_ms`). A call counts from its
-- start until `window_ms` after its answer; one whose replica died before the
-- answer counts for `lost_ms` after its start. An answer only ever frees a
-- place a window from now, so the wait ends exactly when the first place
-- frees, or after a window at most.
CREATE OR REPLACE FUNCTION relay_admit_hubspot_call(
    call_limit INTEGER, window_ms BIGINT, lost_ms BIGINT,
    OUT call BIGINT, OUT wait_ms BIGINT)
LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    paused_until BIGINT;
    counted INTEGER;
    frees_at BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(7468201);
    DELETE FROM hubspot_calls
    WHERE COALESCE(answered_ms + window_ms, started_ms + lost_ms) <= now_ms;
    SELECT not_before_ms INTO paused_until FROM hubspot_pause WHERE id = 1;
    IF paused_until > now_ms THEN
        wait_ms := paused_until - now_ms;
        RETURN;
    END IF;
    SELECT COUNT(*), MIN(COALESCE(answered_ms + window_ms, started_ms + lost_ms))
        INTO counted, frees_at FROM hubspot_calls;
    IF counted >= call_limit THEN
        wait_ms := LEAST(frees_at - now_ms, window_ms);
        RETURN;
    END IF;
    INSERT INTO hubspot_calls (started_ms) VALUES (now_ms) RETURNING id INTO call;
END $$;
"#;

/// Version 1 to 2: completions. A completion
/// waits for its event's attendance records with lower ids: its own, or
/// (after a late one arrived) up to `covers_until`; see `reopen_completion!`.
const COMPLETIONS: &str = concat!(
    r#"
ALTER TABLE records ADD COLUMN covers_until BIGINT;
CREATE INDEX records_completions ON records (id) WHERE state = 'complete' AND status = 'pending';
CREATE FUNCTION relay_reopen_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
"#,
    reopen_completion!(),
    r#"
    RETURN NULL;
END $$;
CREATE TRIGGER records_reopen_completion AFTER INSERT ON records
    FOR EACH ROW WHEN (NEW.state = 'attend') EXECUTE FUNCTION relay_reopen_completion();
"#
);

/// Version 2 to 3: the request that brought a delivery (NULL: stored before
/// request ids).
const REQUEST_IDS: &str = "ALTER TABLE deliveries ADD COLUMN request_id TEXT;";

/// Brings the database to [`SCHEMA_VERSION`] in one transaction: the steps
/// after its version, in order.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS relay_schema (version INTEGER NOT NULL)")
        .await?;
    let version: i32 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM relay_schema", &[])
        .await?
        .get(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Broken(format!(
            "the database has schema version {version}, newer than this gateway's \
             {SCHEMA_VERSION}: run a newer gateway"
        )));
    }
    if version < SCHEMA_VERSION {
        for (_, step) in STEPS.iter().filter(|(to, _)| *to > version) {
            tx.batch_execute(step).await?;
        }
        tx.execute(
            "INSERT INTO relay_schema (version) VALUES ($1)",
            &[&SCHEMA_VERSION],
        )
        .await?;
    }
    tx.batch_execute(FUNCTIONS).await?;
    Ok(tx.commit().await?)
}
