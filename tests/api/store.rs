//! The store contract, written once against `dyn Store` so every store
//! implementation runs the same suite: each part of it is a test of its own,
//! on a fresh store, generated for every backend by [`store_test!`].

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use attendance_relay::{
    demo::simulator::{Fault, Options, Simulator},
    hubspot::Operation,
    record::{Delivery, NewRecord, State, now_ms},
    settings::Secret,
    store::{
        ClaimRequest, CompletionClaim, FetchOutcome, PostgresStore, RecordFilter, RecordStatus,
        Settlement, SqliteStore, Store, StoreError, StoreOptions, StoredCredential,
    },
};

/// Which store a test runs on, for the few answers that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Generates, for a part of the contract (`async fn name(&dyn Store)`; with
/// `shared`, `async fn name(&Arc<dyn Store>)`; with `per backend`, `async fn
/// name(&Arc<dyn Store>, Backend)`), a test per store on a fresh one:
/// `name::on_sqlite` and `name::on_postgres`.
macro_rules! store_test {
    ($name:ident) => {
        store_test!($name, |store, _backend| $name(&**store));
    };
    ($name:ident, shared) => {
        store_test!($name, |store, _backend| $name(store));
    };
    ($name:ident, per backend) => {
        store_test!($name, |store, backend| $name(store, backend));
    };
    ($name:ident, |$store:ident, $backend:ident| $call:expr) => {
        mod $name {
            use super::*;

            #[actix_web::test]
            async fn on_sqlite() {
                let dir = tempfile::tempdir().unwrap();
                let ($store, $backend) = (
                    &open_sqlite(&dir.path().join("nested/relay.db")),
                    Backend::Sqlite,
                );
                $call.await;
            }

            #[actix_web::test]
            #[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
            async fn on_postgres() {
                let database = crate::pg::TestDatabase::create();
                let store: Arc<dyn Store> = Arc::new(PostgresStore::open(&database.url, &StoreOptions::default()).unwrap());
                let ($store, $backend) = (&store, Backend::Postgres);
                $call.await;
            }
        }
    };
}

fn record(email: &str, state: State, at: i64) -> NewRecord {
    record_of("evt", email, state, at)
}

fn record_of(event: &str, email: &str, state: State, at: i64) -> NewRecord {
    NewRecord {
        state,
        email: email.to_owned(),
        first_name: None,
        last_name: None,
        vid: None,
        external_event_id: event.to_owned(),
        external_account_id: "acc".to_owned(),
        interaction_ms: at,
        properties: BTreeMap::new(),
        event: None,
        sender_id: None,
        participant: None,
        closes_session: false,
    }
}

fn delivery(body: &str) -> Delivery {
    Delivery {
        source: "zoom",
        body: body.as_bytes().to_vec(),
        received_ms: now_ms(),
        deferred: false,
        request_id: format!("request-{body}"),
    }
}

fn deferred(body: &str) -> Delivery {
    Delivery {
        deferred: true,
        ..delivery(body)
    }
}

fn claim(batch_size: usize, max_batches: usize, linger_ms: u64) -> ClaimRequest {
    ClaimRequest {
        max_batches,
        batch_size,
        linger: Duration::from_millis(linger_ms),
        lease: Duration::from_secs(60),
    }
}

pub fn open_sqlite(path: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(path.to_str().unwrap()).unwrap())
}

async fn ingest(store: &dyn Store, records: Vec<NewRecord>) -> Vec<bool> {
    store
        .ingest(delivery(&format!("{}", fastrand::u64(..))), records)
        .await
        .unwrap()
        .fresh
}

/// Stores and deduplicates; a leave takes the time of the join it closes.
async fn ingest_suite(store: &dyn Store) {
    let records = vec![
        record("a@x.io", State::Register, 1),
        record("", State::Attend, 2),
    ];
    let first = store
        .ingest(delivery("one"), records.clone())
        .await
        .unwrap();
    assert_eq!((first.accepted(), first.duplicates()), (2, 0));
    let again = store
        .ingest(delivery("one"), records.clone())
        .await
        .unwrap();
    assert_eq!((again.accepted(), again.duplicates()), (0, 2));
    assert_eq!(
        ingest(
            store,
            vec![records[0].clone(), record("b@x.io", State::Cancel, 3)]
        )
        .await,
        vec![false, true]
    );
    let stored = store.records(None, 100).await.unwrap();
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].record, records[0]);
    assert_eq!(stored[1].status, RecordStatus::Unmappable);

    // Two guests without email joining at the same instant are two records.
    let mut guest = record("", State::Attend, 2);
    guest.participant = Some("guest-2".into());
    assert_eq!(ingest(store, vec![guest]).await, vec![true]);

    let mut join = record("c@x.io", State::Attend, 1_000);
    join.properties.insert("joinedAt".into(), "t1".into());
    let mut later_join = join.clone();
    later_join.interaction_ms = 5_000;
    let mut leave = record("c@x.io", State::Attend, 7_000);
    leave
        .properties
        .insert("leftAt".into(), "1970-01-01T00:00:07Z".into());
    leave.closes_session = true;
    let mut early_leave = leave.clone();
    early_leave.interaction_ms = 3_000;
    let mut stranger_leave = leave.clone();
    stranger_leave.email = "d@x.io".into();
    ingest(
        store,
        vec![join, later_join, leave, early_leave, stranger_leave],
    )
    .await;
    let leaves: Vec<_> = store
        .records(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.record.properties.contains_key("leftAt"))
        .map(|r| {
            (
                r.record.email,
                r.record.interaction_ms,
                r.record.properties.get("joinedAt").cloned(),
            )
        })
        .collect();
    assert_eq!(
        leaves,
        vec![
            ("c@x.io".into(), 5_000, Some("1970-01-01T00:00:05Z".into())),
            ("c@x.io".into(), 1_000, Some("1970-01-01T00:00:01Z".into())),
            ("d@x.io".into(), 7_000, None),
        ],
        "each leave closes the latest join before it; one without a join keeps its own time"
    );
}
store_test!(ingest_suite);

/// Whole groups are claimed under a lease, full batches at once, partial
/// ones after lingering, one batch per group per round; settling needs the
/// lease.
async fn queue_suite(store: &dyn Store) {
    let mut records: Vec<NewRecord> = (0..250)
        .map(|i| record_of("big", &format!("b{i}@x.io"), State::Attend, i))
        .collect();
    records.extend((0..30).map(|i| record_of("small", &format!("s{i}@x.io"), State::Attend, i)));
    ingest(store, records).await;

    let lingering = store.claim(&claim(100, 10, 60_000)).await.unwrap();
    let sizes: Vec<(String, usize)> = lingering
        .batches
        .iter()
        .map(|b| (b.group.external_event_id.clone(), b.records.len()))
        .collect();
    assert_eq!(
        sizes,
        vec![("big".into(), 100), ("big".into(), 100)],
        "only full batches"
    );
    assert!(
        lingering
            .batches
            .iter()
            .all(|b| b.records.iter().all(|r| r.attempts == 1)),
        "a claim counts an attempt"
    );
    let nothing = store.claim(&claim(100, 10, 60_000)).await.unwrap();
    assert!(nothing.batches.is_empty());
    let wait = nothing.next_ready_in.expect("partial batches wait");
    assert!(
        wait > Duration::from_secs(50) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );

    let partial = store.claim(&claim(100, 10, 0)).await.unwrap();
    let mut sizes: Vec<(String, usize)> = partial
        .batches
        .iter()
        .map(|b| (b.group.external_event_id.clone(), b.records.len()))
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![("big".into(), 50), ("small".into(), 30)]);
    assert!(
        store
            .claim(&claim(100, 10, 0))
            .await
            .unwrap()
            .batches
            .is_empty()
    );

    // Settling needs the batch's lease.
    let batch = &lingering.batches[0];
    let outcomes = |settlement: Settlement| -> Vec<(i64, Settlement)> {
        batch
            .records
            .iter()
            .map(|r| (r.id, settlement.clone()))
            .collect()
    };
    assert_eq!(
        store
            .settle("not-the-lease", outcomes(Settlement::Delivered))
            .await
            .unwrap(),
        0
    );
    assert!(
        store
            .renew(&batch.lease, Duration::from_secs(60))
            .await
            .unwrap()
    );
    let retry = Settlement::Retry {
        delay: Duration::from_secs(3600),
        error: "HubSpot answered 503".into(),
    };
    assert_eq!(
        store.settle(&batch.lease, outcomes(retry)).await.unwrap(),
        100
    );
    assert_eq!(
        store
            .settle(&batch.lease, outcomes(Settlement::Delivered))
            .await
            .unwrap(),
        0,
        "a settled batch's lease is spent"
    );
    assert!(
        !store
            .renew(&batch.lease, Duration::from_secs(60))
            .await
            .unwrap()
    );
    assert!(
        store
            .claim(&claim(100, 10, 0))
            .await
            .unwrap()
            .batches
            .is_empty(),
        "waits out its retry"
    );
    assert_eq!(store.expedite_retries().await.unwrap(), 100);
    let retried = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert_eq!(
        retried.batches.len(),
        1,
        "the retried batch comes back whole"
    );
    assert_eq!(retried.batches[0].records.len(), 100);
    assert!(
        retried.batches[0]
            .records
            .iter()
            .all(|r| r.attempts == 2 && r.last_error.as_deref() == Some("HubSpot answered 503"))
    );

    // Released: back in the queue, the attempt not counted; dead: kept with its reason.
    let released = &retried.batches[0];
    let ids: Vec<i64> = released.records.iter().map(|r| r.id).collect();
    let mut settlements: Vec<(i64, Settlement)> =
        ids.iter().map(|id| (*id, Settlement::Release)).collect();
    settlements[0].1 = Settlement::Dead {
        reason: "refused".into(),
    };
    store.settle(&released.lease, settlements).await.unwrap();
    let again = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert_eq!(again.batches[0].records.len(), 99);
    assert!(again.batches[0].records.iter().all(|r| r.attempts == 2));
    let dead = store.records(Some(RecordStatus::Dead), 10).await.unwrap();
    assert_eq!(
        (dead[0].id, dead[0].last_error.as_deref()),
        (ids[0], Some("refused"))
    );

    // Everything claimed settles delivered.
    for batch in lingering.batches[1..]
        .iter()
        .chain(&partial.batches)
        .chain(&again.batches)
    {
        let done = batch
            .records
            .iter()
            .map(|r| (r.id, Settlement::Delivered))
            .collect();
        store.settle(&batch.lease, done).await.unwrap();
    }
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (
            stats.count(RecordStatus::Pending),
            stats.count(RecordStatus::Delivered),
            stats.count(RecordStatus::Dead)
        ),
        (0, 279, 1),
        "every other record was delivered"
    );
    assert_eq!(stats.oldest_pending_ms, None);
}
store_test!(queue_suite);

/// A record that arrives while the rest of its group waits out a retry
/// joins that retry: it is not sent alone as a partial batch before it.
async fn a_record_arriving_during_its_groups_retry_joins_that_retry(store: &dyn Store) {
    let records: Vec<NewRecord> = (0..99)
        .map(|i| record_of("webinar", &format!("r{i}@x.io"), State::Attend, i))
        .collect();
    ingest(store, records).await;
    let first = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert_eq!(first.batches.len(), 1);
    let batch = &first.batches[0];
    let retry = Settlement::Retry {
        delay: Duration::from_secs(3600),
        error: "HubSpot answered 503".into(),
    };
    let outcomes = batch
        .records
        .iter()
        .map(|r| (r.id, retry.clone()))
        .collect();
    assert_eq!(store.settle(&batch.lease, outcomes).await.unwrap(), 99);

    ingest(
        store,
        vec![record_of("webinar", "late@x.io", State::Attend, 100)],
    )
    .await;
    let waiting = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert!(
        waiting.batches.is_empty(),
        "the late record waits for its group's retry, although it lingered: {:?}",
        waiting.batches
    );
    let wait = waiting.next_ready_in.expect("the retry is pending");
    assert!(
        wait > Duration::from_secs(3500),
        "until the retry: {wait:?}"
    );

    assert_eq!(store.expedite_retries().await.unwrap(), 99);
    let retried = store.claim(&claim(100, 10, 0)).await.unwrap();
    let sizes: Vec<usize> = retried.batches.iter().map(|b| b.records.len()).collect();
    assert_eq!(sizes, vec![100], "one batch: the retry and the late record");
}
store_test!(a_record_arriving_during_its_groups_retry_joins_that_retry);

/// The same over HTTP: a join that arrives while its webinar's batch waits
/// out the retry HubSpot asked for reaches HubSpot in that batch's create.
#[actix_web::test]
async fn a_join_during_its_webinars_retry_reaches_hubspot_in_that_retry() {
    let hubspot = Simulator::start(Options::default())
        .await
        .expect("simulator starts");
    for email in ["a@example.com", "b@example.com", "late@example.com"] {
        hubspot.add_contact(email);
    }
    // Longer than the linger, so a late join sent alone would go first.
    hubspot.fail_next(
        Operation::AttendanceCreate,
        Fault::status(503).with_header("Retry-After", "3"),
    );
    let app =
        crate::helpers::spawn_forwarding_app(&hubspot, &[("RELAY_BATCH_LINGER_MS", "1000")]).await;
    let join = async |email: &str| {
        let body = crate::helpers::zoom_join("900", email, "2026-01-01T10:00:00Z");
        let (status, answer) = app.post_zoom(&body).await;
        assert_eq!((status.as_u16(), &answer["accepted"]), (200, &1.into()));
    };
    join("a@example.com").await;
    join("b@example.com").await;
    crate::helpers::wait_until("the first create failed", 20, async || {
        let records = app.records().await;
        records.len() == 2
            && records
                .iter()
                .all(|r| r.status == RecordStatus::Pending && r.last_error.is_some())
    })
    .await;
    join("late@example.com").await;
    crate::helpers::wait_until("all three delivered", 20, async || {
        hubspot.attendance().len() == 3
    })
    .await;
    let creates: Vec<(u16, usize)> = hubspot
        .calls()
        .into_iter()
        .filter(|call| call.operation == Operation::AttendanceCreate)
        .map(|call| {
            let inputs = call.body["inputs"].as_array().map_or(0, Vec::len);
            (call.status, inputs)
        })
        .collect();
    assert_eq!(
        creates,
        vec![(503, 2), (200, 3)],
        "one create after the retry, with the late join"
    );
}

/// Groups share the claims fairly, and a lease that runs out frees its batch.
async fn fairness_and_lease_suite(store: &dyn Store) {
    let mut records: Vec<NewRecord> = (0..300)
        .map(|i| record_of("long", &format!("l{i}@x.io"), State::Register, i))
        .collect();
    records.extend((0..100).map(|i| record_of("short", &format!("t{i}@x.io"), State::Register, i)));
    ingest(store, records).await;
    let mut request = claim(100, 2, 0);
    request.lease = Duration::ZERO;
    let first = store.claim(&request).await.unwrap();
    let mut events: Vec<&str> = first
        .batches
        .iter()
        .map(|b| b.group.external_event_id.as_str())
        .collect();
    events.sort();
    assert_eq!(
        events,
        vec!["long", "short"],
        "one batch per group before a second from any"
    );

    // Their claimer died: the leases ran out at once, so the batches are ready again.
    let taken_over = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert_eq!(
        taken_over
            .batches
            .iter()
            .map(|b| b.records.len())
            .sum::<usize>(),
        400
    );
    let stale = &first.batches[0];
    let late = stale
        .records
        .iter()
        .map(|r| {
            (
                r.id,
                Settlement::Dead {
                    reason: "late".into(),
                },
            )
        })
        .collect();
    assert_eq!(
        store.settle(&stale.lease, late).await.unwrap(),
        0,
        "a forwarder whose lease ran out cannot overwrite the new claimer's outcome"
    );
    for batch in &taken_over.batches {
        let done = batch
            .records
            .iter()
            .map(|r| (r.id, Settlement::Delivered))
            .collect();
        assert_eq!(
            store.settle(&batch.lease, done).await.unwrap(),
            batch.records.len()
        );
    }
}
store_test!(fairness_and_lease_suite);

/// Deliveries that only point at their data: claimed for fetching, retried,
/// resolved into (deduplicated) records, or failed — and always counted.
async fn deferred_suite(store: &dyn Store) {
    store
        .ingest(deferred("points at order 1"), Vec::new())
        .await
        .unwrap();
    store
        .ingest(deferred("points at order 2"), Vec::new())
        .await
        .unwrap();
    ingest(store, vec![record("z@x.io", State::Register, 9)]).await;
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        stats.count(RecordStatus::Pending),
        3,
        "deliveries waiting to be fetched count"
    );

    let due = store
        .claim_deliveries(10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(due.len(), 2, "only deferred deliveries are fetched");
    assert_eq!(
        (due[0].body.as_slice(), due[0].attempts),
        (&b"points at order 1"[..], 1)
    );
    assert!(
        store
            .claim_deliveries(10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "one fetcher fetches each"
    );
    let (first, second) = (due[0].clone(), due[1].clone());

    let retried = FetchOutcome::Retry {
        delay: Duration::ZERO,
        error: "Eventbrite answered 503".into(),
    };
    store.settle_delivery(&first, retried).await.unwrap();
    let first = store
        .claim_deliveries(10, Duration::from_secs(60))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(first.attempts, 2);

    // Resolved with a problem: the records that could be mapped are stored,
    // the delivery stays visible as failed.
    let outcome = store
        .settle_delivery(
            &first,
            FetchOutcome::Resolved {
                records: vec![
                    record("f@x.io", State::Register, 1),
                    record("z@x.io", State::Register, 9),
                ],
                problem: Some("attendee 2 has no event_id".into()),
            },
        )
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
    let stats = store.queue_stats().await.unwrap();
    assert_eq!(
        (
            stats.count(RecordStatus::Pending),
            stats.count(RecordStatus::Dead)
        ),
        (2, 2),
        "two pending records; two deliveries that could not (fully) become records"
    );
    // A settlement after the lease was lost changes nothing.
    let stale = store
        .settle_delivery(
            &second,
            FetchOutcome::Resolved {
                records: vec![record("q@x.io", State::Register, 1)],
                problem: None,
            },
        )
        .await
        .unwrap();
    assert!(stale.fresh.is_empty());
}
store_test!(deferred_suite);

/// Retention removes settled records and their deliveries in chunks, never
/// pending ones or deliveries waiting to be fetched.
async fn purge_suite(store: &dyn Store) {
    // Settled: 15 delivered, 5 dead, 3 unmappable; pending: 10 leased and a
    // delivery to be fetched.
    let mut records: Vec<NewRecord> = (0..30)
        .map(|i| record_of("purged", &format!("p{i}@x.io"), State::Attend, i))
        .collect();
    records.extend((0..3).map(|i| {
        let mut guest = record_of("purged", "", State::Attend, i);
        guest.participant = Some(format!("guest-{i}"));
        guest
    }));
    ingest(store, records).await;
    store
        .ingest(deferred("points at an order"), Vec::new())
        .await
        .unwrap();
    let claimed = store.claim(&claim(20, 10, 0)).await.unwrap();
    let full = &claimed.batches[0];
    assert_eq!(full.records.len(), 20);
    let outcomes = full
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let settlement = if i < 15 {
                Settlement::Delivered
            } else {
                Settlement::Dead {
                    reason: "refused".into(),
                }
            };
            (r.id, settlement)
        })
        .collect();
    store.settle(&full.lease, outcomes).await.unwrap();

    let before = store.queue_stats().await.unwrap();
    assert_eq!(before.count(RecordStatus::Pending), 11);
    let settled = before.count(RecordStatus::Delivered)
        + before.count(RecordStatus::Dead)
        + before.count(RecordStatus::Unmappable);
    assert!(settled > 10);
    let cutoff = now_ms() + 1;
    assert_eq!(
        store.purge_settled(cutoff, 10).await.unwrap(),
        10,
        "one chunk at a time"
    );
    while store.purge_settled(cutoff, 10).await.unwrap() > 0 {}
    let after = store.queue_stats().await.unwrap();
    assert_eq!(
        after.count(RecordStatus::Delivered) + after.count(RecordStatus::Unmappable),
        0
    );
    assert_eq!(
        after.count(RecordStatus::Pending),
        before.count(RecordStatus::Pending)
    );
    assert!(
        store
            .records(None, 1000)
            .await
            .unwrap()
            .iter()
            .all(|r| r.status == RecordStatus::Pending)
    );
}
store_test!(purge_suite);

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
        refreshed_ms: 500,
    };
    store
        .save_credential("hubspot-oauth:app", &credential)
        .await
        .unwrap();
    credential.access_token = Secret::from("access-2".to_owned());
    credential.expires_at_ms = 2_000;
    credential.refreshed_ms = 1_500;
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
            loaded.expires_at_ms,
            loaded.refreshed_ms
        ),
        ("install-1", "refresh-1", "access-2", 2_000, 1_500)
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
    // Held until dropped; a second holder after that gets it.
    drop(store.lock_credential("hubspot-oauth:app").await.unwrap());
    drop(store.lock_credential("hubspot-oauth:app").await.unwrap());
}
store_test!(credentials);

fn completions(grace_secs: u64) -> CompletionClaim {
    CompletionClaim {
        max: 10,
        grace: Duration::from_secs(grace_secs),
        lease: Duration::from_secs(60),
    }
}

/// Ids of the completions `claim_completions` hands out now, settled as
/// delivered.
async fn complete_due(store: &dyn Store, grace_secs: u64) -> Vec<i64> {
    let mut ids = Vec::new();
    for batch in store
        .claim_completions(&completions(grace_secs))
        .await
        .unwrap()
    {
        assert_eq!(batch.group.state, State::Complete);
        let id = batch.records[0].id;
        let settled = store
            .settle(&batch.lease, vec![(id, Settlement::Delivered)])
            .await
            .unwrap();
        assert_eq!(settled, 1);
        ids.push(id);
    }
    ids
}

/// Delivers every pending attendance batch of the store; how many records.
async fn deliver_attendance(store: &dyn Store) -> usize {
    let claimed = store.claim(&claim(100, 100, 0)).await.unwrap();
    let mut delivered = 0;
    for batch in claimed.batches {
        assert_ne!(
            batch.group.state,
            State::Complete,
            "never in a create batch"
        );
        let outcomes: Vec<_> = batch
            .records
            .iter()
            .map(|r| (r.id, Settlement::Delivered))
            .collect();
        delivered += store.settle(&batch.lease, outcomes).await.unwrap();
    }
    delivered
}

/// A completion waits for its grace and for the attendance before it; a
/// late attendance record reopens it, and it waits for that one too.
async fn completion_suite(store: &dyn Store) {
    let end = || NewRecord::completion("acc".into(), "ending".into(), None, 1_000, 5_000).unwrap();
    ingest(
        store,
        vec![record_of("ending", "a@x.io", State::Attend, 1_000)],
    )
    .await;
    assert_eq!(ingest(store, vec![end()]).await, vec![true]);
    assert_eq!(
        ingest(store, vec![end()]).await,
        vec![false],
        "deduplicated"
    );
    assert!(
        complete_due(store, 0).await.is_empty(),
        "the attendance before it is not settled"
    );
    assert_eq!(deliver_attendance(store).await, 1);
    assert!(
        complete_due(store, 3600).await.is_empty(),
        "within its grace"
    );
    let completed = complete_due(store, 0).await;
    assert_eq!(completed.len(), 1);
    assert!(complete_due(store, 0).await.is_empty(), "completed once");

    // A leave arriving after the completion: the event is completed again,
    // after that leave is settled and the grace has passed once more.
    let mut late = record_of("ending", "a@x.io", State::Attend, 6_000);
    late.properties.insert("leftAt".into(), "x".into());
    ingest(store, vec![late]).await;
    let reopened = store
        .records(Some(RecordStatus::Pending), 100)
        .await
        .unwrap();
    assert!(
        reopened.iter().any(|r| r.id == completed[0]),
        "pending again"
    );
    assert!(
        complete_due(store, 0).await.is_empty(),
        "the late leave first"
    );
    assert_eq!(deliver_attendance(store).await, 1);
    assert!(complete_due(store, 3600).await.is_empty(), "a new grace");
    assert_eq!(
        complete_due(store, 0).await,
        completed,
        "the same completion again"
    );
    // Registrations after the end change nothing.
    ingest(
        store,
        vec![record_of("ending", "b@x.io", State::Register, 7_000)],
    )
    .await;
    assert_eq!(deliver_attendance(store).await, 1);
    assert!(complete_due(store, 0).await.is_empty());
}
store_test!(completion_suite);

/// A store is alive and writable until closed; then it refuses writes.
async fn a_closed_store_refuses_writes(store: &dyn Store) {
    assert!(store.alive());
    store.check_writable().await.unwrap();
    store.close().await;
    assert!(
        store.check_writable().await.is_err(),
        "a closed store refuses writes"
    );
    assert!(!store.alive(), "a store whose writer stopped is not alive");
}
store_test!(a_closed_store_refuses_writes);

/// Concurrent ingests all land, and share commits (group commit) rather
/// than taking one each.
async fn concurrent_writes_share_commits_and_all_land(store: &Arc<dyn Store>) {
    let before = store.commits();
    let writes = (0..500).map(|i| {
        let store = Arc::clone(store);
        async move {
            store
                .ingest(
                    delivery(&format!("d{i}")),
                    vec![record(&format!("p{i}@x.io"), State::Attend, i)],
                )
                .await
                .unwrap()
        }
    });
    let outcomes = futures_util::future::join_all(writes).await;
    assert!(outcomes.iter().all(|o| o.accepted() == 1));
    let commits = store.commits() - before;
    assert!(
        (1..500).contains(&commits),
        "500 concurrent ingests took {commits} commits"
    );
    assert_eq!(store.records(None, 1000).await.unwrap().len(), 500);
    store.close().await;
}
store_test!(concurrent_writes_share_commits_and_all_land, shared);

/// Each record can be traced to the request that brought it, and each
/// delivery still owed too.
async fn records_and_owed_deliveries_name_their_request(store: &dyn Store) {
    store
        .ingest(delivery("join"), vec![record("a@x.io", State::Attend, 1)])
        .await
        .unwrap();
    store.ingest(deferred("order"), Vec::new()).await.unwrap();
    let stored = store.records(None, 10).await.unwrap();
    assert_eq!(stored[0].request_id.as_deref(), Some("request-join"));
    let claimed = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert_eq!(
        claimed.batches[0].records[0].request_id.as_deref(),
        Some("request-join")
    );
    let owed = store
        .list_owed_deliveries(&RecordFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(owed[0].request_id.as_deref(), Some("request-order"));
}
store_test!(records_and_owed_deliveries_name_their_request);

/// Concurrent deliveries, committed together: equal ones stored once, and
/// one the database refuses fails alone. PostgreSQL takes no NUL in text;
/// SQLite stores it like any other character.
async fn concurrent_deliveries_dedupe_and_fail_alone(store: &Arc<dyn Store>, backend: Backend) {
    const REFUSED: i64 = 25;
    let nul = "nul\u{0}@x.io";
    let writes = (0..60).map(|i| {
        let store = Arc::clone(store);
        async move {
            // 40 to 59 repeat 0 to 19.
            let n = if i >= 40 { i - 40 } else { i };
            let email = if n == REFUSED {
                nul.to_owned()
            } else {
                format!("p{n}@x.io")
            };
            let records = vec![record(&email, State::Attend, n)];
            store.ingest(delivery(&format!("d{i}")), records).await
        }
    });
    let outcomes = futures_util::future::join_all(writes).await;
    let accepted = |i: usize| outcomes[i].as_ref().map(|o| o.accepted()).unwrap();
    for n in (0..40).filter(|n| *n != REFUSED as usize) {
        let copies = if n < 20 {
            accepted(n) + accepted(n + 40)
        } else {
            accepted(n)
        };
        assert_eq!(copies, 1, "p{n} stored once");
    }
    let stored = store.records(None, 1000).await.unwrap();
    let with_nul = stored.iter().filter(|r| r.record.email == nul).count();
    match (backend, &outcomes[REFUSED as usize]) {
        (Backend::Postgres, Err(StoreError::Broken(why))) => {
            assert_eq!((stored.len(), with_nul), (39, 0), "refused alone");
            // The server's own words, not only the driver's "db error".
            assert!(why.contains("invalid byte sequence"), "{why}");
        }
        (Backend::Sqlite, Ok(outcome)) => {
            assert_eq!(outcome.accepted(), 1);
            assert_eq!((stored.len(), with_nul), (40, 1), "stored as sent");
        }
        (backend, outcome) => panic!("{backend:?} answered {outcome:?} for a NUL in text"),
    }
    store.close().await;
}
store_test!(concurrent_deliveries_dedupe_and_fail_alone, per backend);

/// A PostgreSQL database of the previous schema (version 2) gains request
/// ids in place and keeps its records.
#[actix_web::test]
#[ignore = "needs PostgreSQL (RELAY_TEST_POSTGRES_URL or 127.0.0.1:5432): --include-ignored"]
async fn a_previous_release_postgres_database_is_upgraded_in_place() {
    let database = crate::pg::TestDatabase::create();
    let open = || -> Arc<dyn Store> {
        Arc::new(PostgresStore::open(&database.url, &StoreOptions::default()).unwrap())
    };
    let store = open();
    ingest(&*store, vec![record("old@x.io", State::Attend, 1)]).await;
    store.close().await;
    drop(store);
    // As the previous release left it.
    database.execute(
        "ALTER TABLE deliveries DROP COLUMN request_id;
         DELETE FROM relay_schema; INSERT INTO relay_schema (version) VALUES (2);",
    );
    let store = open();
    store
        .ingest(delivery("new"), vec![record("new@x.io", State::Attend, 2)])
        .await
        .unwrap();
    let stored: Vec<_> = store
        .records(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.record.email, r.request_id))
        .collect();
    assert_eq!(
        stored,
        vec![
            ("old@x.io".to_owned(), None),
            ("new@x.io".to_owned(), Some("request-new".to_owned()))
        ]
    );
    store.close().await;
}

/// A copy of a fixture store written by an earlier release.
fn fixture(name: &str, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("relay.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
        &path,
    )
    .unwrap();
    path
}

fn schema_version(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap()
}

/// A first release's five pending records of webinar 900 (three joins, a
/// registration, a leave) after the upgrade: all there, with their identity,
/// and forwarded.
pub async fn first_release_records_are_kept(store: &dyn Store) {
    let pending = store
        .records(Some(RecordStatus::Pending), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 5, "every pending record survives");
    assert!(
        pending.iter().all(|r| r.request_id.is_none()),
        "stored before request ids"
    );
    assert!(
        pending
            .iter()
            .any(|r| r.record.email == "reg@example.com" && r.record.state == State::Register)
    );
    // Its records keep their identity: the same join again is a duplicate.
    let mut join = pending[0].record.clone();
    join.sender_id = None;
    assert_eq!(
        ingest(store, vec![join, record("new@x.io", State::Attend, 8)]).await,
        vec![false, true]
    );
    let claimed = store.claim(&claim(100, 10, 0)).await.unwrap();
    assert_eq!(
        claimed
            .batches
            .iter()
            .map(|b| b.records.len())
            .sum::<usize>(),
        6
    );
}

#[actix_web::test]
async fn a_first_release_database_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture("first-release.db", dir.path());
    assert_eq!(schema_version(&path), 0);
    let store = open_sqlite(&path);
    first_release_records_are_kept(&*store).await;
    store.close().await;
    assert_eq!(schema_version(&path), 5);
    // Opening again is a no-op.
    let reopened = open_sqlite(&path);
    assert_eq!(reopened.records(None, 10).await.unwrap().len(), 6);
    reopened.close().await;
}

#[actix_web::test]
async fn a_second_release_database_keeps_one_record_per_sender_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture("second-release.db", dir.path());
    assert_eq!(schema_version(&path), 2);
    let store = open_sqlite(&path);
    let generic: Vec<_> = store
        .records(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.source == "generic")
        .collect();
    assert_eq!(generic.len(), 2, "nothing is deleted");
    assert_eq!(
        (generic[0].status, generic[0].record.email.as_str()),
        (RecordStatus::Pending, "first@example.com")
    );
    assert_eq!(
        generic[1].status,
        RecordStatus::Dead,
        "the second copy is not forwarded"
    );
    assert!(
        generic[1]
            .last_error
            .as_deref()
            .unwrap()
            .contains("same sender id")
    );
    // Sent a third time under the same id, with yet another email: a duplicate.
    let mut resend = record_of(
        "g-evt",
        "third@example.com",
        State::Register,
        1_767_261_600_000,
    );
    resend.sender_id = Some("gen-1".into());
    let outcome = store
        .ingest(
            Delivery {
                source: "generic",
                ..delivery("resend")
            },
            vec![resend],
        )
        .await
        .unwrap();
    assert_eq!(outcome.fresh, vec![false]);
    store.close().await;
}

#[actix_web::test]
async fn a_third_release_database_gains_completions() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture("third-release.db", dir.path());
    assert_eq!(schema_version(&path), 3);
    let store = open_sqlite(&path);
    let end = NewRecord::completion(
        "zoom-account-1".into(),
        "900".into(),
        Some("Launch webinar".into()),
        1_767_261_600_000,
        1_767_265_200_000,
    )
    .unwrap();
    assert_eq!(ingest(&*store, vec![end]).await, vec![true]);
    assert!(
        complete_due(&*store, 0).await.is_empty(),
        "the four stored records come first"
    );
    assert_eq!(deliver_attendance(&*store).await, 4);
    assert_eq!(complete_due(&*store, 0).await.len(), 1);
    // A late leave closes the re-join of the stored records and reopens the event.
    let mut leave = record_of("900", "a@example.com", State::Attend, 1_767_264_000_000);
    leave.external_account_id = "zoom-account-1".into();
    leave
        .properties
        .insert("leftAt".into(), "2026-01-01T11:00:00Z".into());
    leave.closes_session = true;
    ingest(&*store, vec![leave]).await;
    let pending = store
        .records(Some(RecordStatus::Pending), 10)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2, "the leave, and the completion again");
    let leave = pending
        .iter()
        .find(|r| r.record.state == State::Attend)
        .unwrap();
    assert_eq!(leave.record.properties["joinedAt"], "2026-01-01T10:30:00Z");
    store.close().await;
    assert_eq!(schema_version(&path), 5);
}

/// Retention purges in small commits, so a purge of a large backlog never
/// holds ingest's commits behind it.
#[actix_web::test]
async fn ingest_keeps_flowing_while_a_large_purge_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    open_sqlite(&path).close().await;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "INSERT INTO deliveries (id, source, received_ms, body) VALUES (1, 'zoom', 0, x'');
             INSERT INTO groups (id, external_account_id, external_event_id, state)
                 VALUES (1, 'acc', 'old', 'attend');
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
             INSERT INTO records (delivery_id, group_id, dedupe_key, source, state, email,
                 external_event_id, external_account_id, interaction_ms, properties, status,
                 next_attempt_ms, created_ms, updated_ms)
             SELECT 1, 1, randomblob(32), 'zoom', 'attend', 'p' || i || '@x.io', 'old', 'acc', i,
                 '{}', 'delivered', 0, 0, 0 FROM n;",
        )
        .unwrap();
    let store = open_sqlite(&path);
    // Purge commits so far, as each ingest finds them.
    let purged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let purging = {
        let (store, purged) = (Arc::clone(&store), Arc::clone(&purged));
        actix_web::rt::spawn(async move {
            while store.purge_settled(1, 500).await.unwrap() > 0 {
                purged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            purged.load(std::sync::atomic::Ordering::SeqCst)
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut ingested = 0;
    while !purging.is_finished() {
        ingest(
            &*store,
            vec![record(
                &format!("n{ingested}@x.io"),
                State::Attend,
                ingested,
            )],
        )
        .await;
        seen.insert(purged.load(std::sync::atomic::Ordering::SeqCst));
        ingested += 1;
    }
    let chunks = purging.await.unwrap();
    assert!(chunks >= 400, "purged in {chunks} small commits");
    assert!(
        ingested > 10,
        "ingest went on during the purge ({ingested} webhooks)"
    );
    // Not behind the whole purge: ingests landed between its commits.
    assert!(
        seen.len() > 10,
        "ingests finished at only {} points of {chunks} purge commits",
        seen.len()
    );
    assert_eq!(
        store
            .queue_stats()
            .await
            .unwrap()
            .count(RecordStatus::Delivered),
        0
    );
    store.close().await;
}
