//! The store contract, written once against `dyn Store` so every store
//! implementation runs the same suite.

use std::{collections::BTreeMap, sync::Arc};

use attendance_relay::{
    record::{Delivery, NewRecord, State, now_ms},
    settings::Secret,
    store::{FetchOutcome, RecordStatus, Settlement, SqliteStore, Store, StoredCredential},
};

fn record(email: &str, state: State, at: i64) -> NewRecord {
    NewRecord {
        state,
        email: email.to_owned(),
        first_name: None,
        last_name: None,
        vid: None,
        external_event_id: "evt".to_owned(),
        external_account_id: "acc".to_owned(),
        interaction_ms: at,
        properties: BTreeMap::new(),
        event: None,
        sender_id: None,
    }
}

fn delivery(body: &str, received_ms: i64) -> Delivery {
    use sha2::Digest;
    Delivery {
        source: "zoom",
        key: sha2::Sha256::digest(body.as_bytes()).into(),
        body: body.as_bytes().to_vec(),
        received_ms,
        deferred: false,
    }
}

async fn suite(store: Arc<dyn Store>) {
    // A delivery and its records, then the same delivery again.
    let records = vec![
        record("a@x.io", State::Register, 1),
        record("", State::Attend, 2),
    ];
    let first = store
        .ingest(delivery("one", now_ms()), records.clone())
        .await
        .unwrap();
    assert_eq!(
        (
            first.accepted(),
            first.duplicates(),
            first.duplicate_delivery
        ),
        (2, 0, false)
    );
    let again = store
        .ingest(delivery("one", now_ms()), records.clone())
        .await
        .unwrap();
    assert_eq!(
        (
            again.accepted(),
            again.duplicates(),
            again.duplicate_delivery
        ),
        (0, 2, true)
    );

    // Another delivery with one known and one new record.
    let mixed = store
        .ingest(
            delivery("two", now_ms()),
            vec![records[0].clone(), record("b@x.io", State::Cancel, 3)],
        )
        .await
        .unwrap();
    assert_eq!(mixed.fresh, vec![false, true]);

    let stored = store.records(None, 100).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].record, records[0]);
    assert_eq!(stored[1].status, RecordStatus::Unmappable);
    let stats = store.queue_stats().await.unwrap();
    assert!(stats.by_status.contains(&(RecordStatus::Pending, 2)));
    assert!(stats.by_status.contains(&(RecordStatus::Unmappable, 1)));
    assert!(stats.oldest_pending_ms.is_some());

    // Open sessions: a join without a leave, latest at or before the given time.
    let mut join = record("c@x.io", State::Attend, 1_000);
    join.properties.insert("joinedAt".into(), "t".into());
    let mut later_join = join.clone();
    later_join.interaction_ms = 5_000;
    let mut closed = join.clone();
    closed.interaction_ms = 7_000;
    closed.properties.insert("leftAt".into(), "t".into());
    store
        .ingest(delivery("three", now_ms()), vec![join, later_join, closed])
        .await
        .unwrap();
    assert_eq!(
        store
            .open_join_time("zoom", "evt", "c@x.io", 6_000)
            .await
            .unwrap(),
        Some(5_000)
    );
    assert_eq!(
        store
            .open_join_time("zoom", "evt", "c@x.io", 4_000)
            .await
            .unwrap(),
        Some(1_000)
    );
    assert_eq!(
        store
            .open_join_time("zoom", "evt", "c@x.io", 500)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .open_join_time("zoom", "other", "c@x.io", 6_000)
            .await
            .unwrap(),
        None
    );

    forwarding_queue(&*store).await;
    credentials(&*store).await;

    // Retention removes settled records and their deliveries, never pending ones.
    store.check_writable().await.unwrap();
    let removed = store.purge_settled(now_ms() + 1).await.unwrap();
    assert!(removed >= 1);
    let left = store.records(None, 100).await.unwrap();
    assert!(left.iter().all(|r| r.status == RecordStatus::Pending));
    assert_eq!(left.len(), 3);

    store.close().await;
    assert!(
        store.check_writable().await.is_err(),
        "a closed store refuses writes"
    );
}

/// Due records are taken once until settled or their lease runs out; a
/// settlement moves each on. Expects five pending records.
async fn forwarding_queue(store: &dyn Store) {
    let now = now_ms() + 1;
    let due = store.due(now, 100).await.unwrap();
    assert_eq!(due.len(), 5);
    assert!(
        due.iter()
            .all(|r| r.attempts == 0 && r.next_attempt_ms <= now)
    );
    let ids: Vec<i64> = due.iter().map(|r| r.id).collect();
    assert_eq!(store.claim(&ids, now, now + 60_000).await.unwrap(), ids);
    assert!(
        store
            .claim(&ids, now, now + 60_000)
            .await
            .unwrap()
            .is_empty(),
        "a taken record is not taken again"
    );
    assert!(store.due(now, 100).await.unwrap().is_empty());
    assert_eq!(
        store.due(now + 60_000, 100).await.unwrap().len(),
        5,
        "due again once its forwarder's lease ran out"
    );

    store
        .settle(vec![
            (ids[0], Settlement::Delivered),
            (
                ids[1],
                Settlement::Retry {
                    at_ms: now + 1_000,
                    error: "HubSpot answered 503".into(),
                },
            ),
            (
                ids[2],
                Settlement::Dead {
                    reason: "refused".into(),
                },
            ),
            (ids[3], Settlement::Release),
            (ids[4], Settlement::Release),
        ])
        .await
        .unwrap();
    let due_now = store.due(now, 100).await.unwrap();
    assert_eq!(
        due_now.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[3], ids[4]]
    );
    assert!(
        due_now.iter().all(|r| r.attempts == 0),
        "a released record was not attempted"
    );
    let later = store.due(now + 1_000, 100).await.unwrap();
    let retried = later
        .iter()
        .find(|r| r.id == ids[1])
        .expect("due at its retry time");
    assert_eq!(
        (retried.attempts, retried.last_error.as_deref()),
        (1, Some("HubSpot answered 503"))
    );
    let dead = store.records(Some(RecordStatus::Dead), 10).await.unwrap();
    assert_eq!(
        (dead.len(), dead[0].id, dead[0].last_error.as_deref()),
        (1, ids[2], Some("refused"))
    );
    let delivered = store
        .records(Some(RecordStatus::Delivered), 10)
        .await
        .unwrap();
    assert_eq!(
        delivered.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
}

/// The OAuth credential: absent, stored, replaced by a newer one, per key.
async fn credentials(store: &dyn Store) {
    assert!(
        store
            .load_credential("hubspot-oauth:app")
            .await
            .unwrap()
            .is_none()
    );
    let mut credential = StoredCredential {
        origin: "install-1".into(),
        refresh_token: Secret::from("refresh-1".to_owned()),
        access_token: Secret::from("access-1".to_owned()),
        expires_at_ms: 1_000,
    };
    store
        .save_credential("hubspot-oauth:app", &credential)
        .await
        .unwrap();
    credential.access_token = Secret::from("access-2".to_owned());
    credential.expires_at_ms = 2_000;
    store
        .save_credential("hubspot-oauth:app", &credential)
        .await
        .unwrap();
    let loaded = store
        .load_credential("hubspot-oauth:app")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            loaded.origin.as_str(),
            loaded.refresh_token.expose(),
            loaded.access_token.expose(),
            loaded.expires_at_ms
        ),
        ("install-1", "refresh-1", "access-2", 2_000)
    );
    assert!(
        !format!("{loaded:?}").contains("access-2"),
        "Debug hides the tokens"
    );
    assert!(
        store
            .load_credential("hubspot-oauth:other")
            .await
            .unwrap()
            .is_none()
    );
}

/// Deliveries that only point at their data: stored, due for fetching,
/// retried, resolved into (deduplicated) records, or failed.
async fn deferred_suite(store: Arc<dyn Store>) {
    let now = now_ms();
    let mut pointer = delivery("points at order 1", now);
    pointer.deferred = true;
    let stored = store.ingest(pointer.clone(), Vec::new()).await.unwrap();
    assert!(!stored.duplicate_delivery && stored.fresh.is_empty());
    let mut other = delivery("points at order 2", now);
    other.deferred = true;
    store.ingest(other, Vec::new()).await.unwrap();
    store
        .ingest(
            delivery("plain", now),
            vec![record("z@x.io", State::Register, 9)],
        )
        .await
        .unwrap();

    let due = store.due_deliveries(now, 10).await.unwrap();
    assert_eq!(
        due.len(),
        2,
        "only deferred deliveries are due for fetching"
    );
    assert_eq!(
        (due[0].body.as_slice(), due[0].attempts),
        (pointer.body.as_slice(), 0)
    );
    let (first, second) = (due[0].clone(), due[1].clone());

    let retried = FetchOutcome::Retry {
        at_ms: now + 5_000,
        error: "Eventbrite answered 503".into(),
    };
    store.settle_delivery(&first, retried).await.unwrap();
    let due: Vec<i64> = store
        .due_deliveries(now, 10)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(due, vec![second.id]);
    let later = store.due_deliveries(now + 5_000, 10).await.unwrap();
    assert_eq!(
        later.iter().find(|d| d.id == first.id).map(|d| d.attempts),
        Some(1)
    );

    // Resolved: its records are stored like any ingest's, deduplicated.
    let records = vec![
        record("a@x.io", State::Register, 1),
        record("z@x.io", State::Register, 9),
    ];
    let outcome = store
        .settle_delivery(&first, FetchOutcome::Resolved(records))
        .await
        .unwrap();
    assert_eq!(outcome.fresh, vec![true, false]);
    store
        .settle_delivery(
            &second,
            FetchOutcome::Failed {
                reason: "gone".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        store
            .due_deliveries(now + 60_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let pending = store
        .records(Some(RecordStatus::Pending), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2);

    // A delivery still waiting for its fetch survives retention.
    let mut waiting = delivery("points at order 3", now - 10_000);
    waiting.deferred = true;
    store.ingest(waiting, Vec::new()).await.unwrap();
    store.purge_settled(now + 1).await.unwrap();
    assert_eq!(
        store.due_deliveries(now + 60_000, 10).await.unwrap().len(),
        1
    );
    store.close().await;
}

#[actix_web::test]
async fn sqlite_store_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("nested/relay.db").to_str().unwrap()).unwrap();
    suite(Arc::new(store)).await;
    let store = SqliteStore::open(dir.path().join("deferred.db").to_str().unwrap()).unwrap();
    deferred_suite(Arc::new(store)).await;
}

#[actix_web::test]
async fn concurrent_writes_share_commits_and_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path().join("relay.db").to_str().unwrap()).unwrap());
    let writes = (0..500).map(|i| {
        let store = Arc::clone(&store);
        async move {
            store
                .ingest(
                    delivery(&format!("d{i}"), now_ms()),
                    vec![record(&format!("p{i}@x.io"), State::Attend, i)],
                )
                .await
                .unwrap()
        }
    });
    let outcomes = futures_util::future::join_all(writes).await;
    assert!(outcomes.iter().all(|o| o.accepted() == 1));
    assert_eq!(store.records(None, 1000).await.unwrap().len(), 500);
    store.close().await;
}

/// The schema the first release created (user_version 0), as a fixture.
const FIRST_RELEASE_SCHEMA: &str = r#"
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, dedupe_key BLOB NOT NULL,
    received_ms INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (source, dedupe_key));
CREATE TABLE records (
    id INTEGER PRIMARY KEY, delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    dedupe_key BLOB NOT NULL UNIQUE, source TEXT NOT NULL, state TEXT NOT NULL,
    email TEXT NOT NULL, first_name TEXT, last_name TEXT, vid INTEGER,
    external_event_id TEXT NOT NULL, external_account_id TEXT NOT NULL,
    interaction_ms INTEGER NOT NULL, properties TEXT NOT NULL, event_info TEXT,
    status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL,
    last_error TEXT, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE INDEX records_by_status ON records (status, next_attempt_ms);
CREATE INDEX records_by_contact ON records (external_event_id, email);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"#;

#[actix_web::test]
async fn a_first_release_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    let old = record("kept@x.io", State::Register, 7);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(FIRST_RELEASE_SCHEMA).unwrap();
        conn.execute(
            "INSERT INTO deliveries (id, source, dedupe_key, received_ms, body) VALUES (1, 'zoom', x'01', 5, x'7b7d')",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO records (delivery_id, dedupe_key, source, state, email, external_event_id,
                 external_account_id, interaction_ms, properties, status, next_attempt_ms, created_ms, updated_ms)
             VALUES (1, ?1, 'zoom', 'register', 'kept@x.io', 'evt', 'acc', 7, '{}', 'pending', 5, 5, 5)",
            [&old.dedupe_key("zoom")[..]],
        )
        .unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(path.to_str().unwrap()).unwrap());
    let due = store.due(now_ms(), 10).await.unwrap();
    assert_eq!(
        (due.len(), due[0].record.email.as_str()),
        (1, "kept@x.io"),
        "the pending record survives"
    );
    let again = store
        .ingest(
            delivery("new body", now_ms()),
            vec![old, record("new@x.io", State::Attend, 8)],
        )
        .await
        .unwrap();
    assert_eq!(
        again.fresh,
        vec![false, true],
        "its dedupe key still counts"
    );
    assert_eq!(
        store
            .claim(&[due[0].id], now_ms(), now_ms() + 1_000)
            .await
            .unwrap(),
        vec![due[0].id]
    );
    store.close().await;

    let version: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 2);
    // Opening again is a no-op.
    let reopened = SqliteStore::open(path.to_str().unwrap()).unwrap();
    assert_eq!(reopened.records(None, 10).await.unwrap().len(), 2);
    reopened.close().await;
}
