//! Stored records reach HubSpot (the simulator, over real HTTP): batched,
//! within the rate limit, and settled as SPEC section 3 says for every kind
//! of answer.

use std::time::Duration;

use attendance_relay::{
    demo::simulator::{Fault, Options, Simulator},
    hubspot::Operation,
    store::RecordStatus,
};
use serde_json::{Value, json};

use crate::helpers::{HUBSPOT_TOKEN, TestApp, metric, spawn_forwarding_app, wait_until, zoom_join};

async fn simulator(options: Options) -> Simulator {
    Simulator::start(options).await.expect("simulator starts")
}

fn creates(hubspot: &Simulator) -> Vec<attendance_relay::demo::simulator::Call> {
    hubspot
        .calls()
        .into_iter()
        .filter(|call| call.operation == Operation::AttendanceCreate)
        .collect()
}

async fn join(app: &TestApp, webinar: &str, email: &str, at: &str) {
    let (status, body) = app.post_zoom(&zoom_join(webinar, email, at)).await;
    assert_eq!(
        (status.as_u16(), &body["accepted"]),
        (200, &json!(1)),
        "{body}"
    );
}

async fn wait_settled(app: &TestApp, n: usize) {
    wait_until(&format!("{n} records are settled"), 20, async || {
        let records = app.records().await;
        let settled = records
            .iter()
            .filter(|r| matches!(r.status, RecordStatus::Delivered | RecordStatus::Dead))
            .count();
        settled >= n
    })
    .await;
}

async fn status_of(app: &TestApp, email: &str) -> (RecordStatus, Option<String>) {
    let record = app
        .records()
        .await
        .into_iter()
        .find(|r| r.record.email == email)
        .expect("record stored");
    (record.status, record.last_error)
}

#[actix_web::test]
async fn many_joins_travel_in_few_batches_exactly_as_hubspot_requires() {
    let hubspot = simulator(Options::default()).await;
    let known: Vec<i64> = (0..150)
        .map(|i| hubspot.add_contact(&format!("known{i}@example.com")))
        .collect();
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("ZOOM_EXTERNAL_ACCOUNT_ID", "acct/1 ü"),
            // Longer than posting the 250 takes on a loaded machine: only
            // the last 50 wait for it.
            ("RELAY_BATCH_LINGER_MS", "5000"),
        ],
    )
    .await;
    let sends = (0..250).map(|i| {
        let email = if i < 150 {
            format!("Known{i}@Example.com")
        } else {
            format!("new{i}@example.com")
        };
        let app = &app;
        async move {
            join(
                app,
                "812 34",
                &email,
                &format!("2026-01-01T10:{:02}:{:02}Z", i / 60, i % 60),
            )
            .await
        }
    });
    futures_util::future::join_all(sends).await;
    wait_settled(&app, 250).await;

    let calls = creates(&hubspot);
    assert_eq!(
        calls.len(),
        3,
        "250 joins of one webinar: three create calls"
    );
    for call in &calls {
        assert_eq!(
            call.path,
            "/marketing/marketing-events/2026-03/attendance/812%2034/attend/create?externalAccountId=acct%2F1%20%C3%BC"
        );
        assert_eq!(
            call.authorization.as_deref(),
            Some(format!("Bearer {HUBSPOT_TOKEN}").as_str())
        );
        let inputs = call.body["inputs"].as_array().expect("inputs");
        assert!(inputs.len() <= 100);
        for input in inputs {
            let keys: Vec<&str> = input
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["interactionDateTime", "properties", "vid"]);
            assert!(input["vid"].is_i64() && input["interactionDateTime"].is_i64());
            assert!(input["properties"]["joinedAt"].is_string());
        }
    }
    let reads: Vec<_> = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::ContactsRead)
        .collect();
    assert_eq!(reads.len(), 3, "250 emails: three look-ups of up to 100");
    assert_eq!(reads[0].body["propertiesWithHistory"], json!([]));
    let upserts = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::ContactsUpsert)
        .count();
    assert_eq!(
        upserts, 2,
        "the 100 unknown contacts, in the second and third batch, are created by each batch in one call"
    );

    let attendance = hubspot.attendance();
    assert_eq!(attendance.len(), 250);
    assert!(
        known
            .iter()
            .all(|vid| attendance.iter().filter(|a| a.vid == *vid).count() == 1)
    );
    let first = attendance.iter().find(|a| a.vid == known[0]).unwrap();
    assert_eq!(
        (first.state.as_str(), first.interaction_ms),
        ("attend", 1_767_261_600_000)
    );
    assert_eq!(first.properties["joinedAt"], "2026-01-01T10:00:00Z");

    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_records_total",
            &[("state", "attend"), ("outcome", "delivered")]
        ),
        Some(250.0)
    );
    assert_eq!(
        metric(&metrics, "relay_hubspot_batch_size_count", &[]),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "relay_hubspot_requests_total",
            &[("operation", "attendance_create"), ("status", "200")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&metrics, "relay_queue_records", &[("status", "delivered")]),
        Some(250.0)
    );
}

#[actix_web::test]
async fn the_same_join_through_two_deliveries_reaches_hubspot_once() {
    let hubspot = simulator(Options::default()).await;
    let app = spawn_forwarding_app(&hubspot, &[]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;
    wait_settled(&app, 1).await;
    // Zoom sends the same fact again in a new delivery (another event_ts).
    let mut again: Value =
        serde_json::from_slice(&zoom_join("1", "jill@example.com", "2026-01-01T10:00:00Z"))
            .unwrap();
    again["event_ts"] = json!(1_767_261_999_000_i64);
    let (_, body) = app.post_zoom(again.to_string().as_bytes()).await;
    assert_eq!(body["duplicates"], json!(1));
    // A later join through the same path: once it has reached HubSpot, a
    // second send of the first would have too.
    join(&app, "1", "later@example.com", "2026-01-01T10:05:00Z").await;
    wait_settled(&app, 2).await;
    let vids: Vec<Option<i64>> = hubspot.attendance().iter().map(|a| Some(a.vid)).collect();
    let expected = ["jill@example.com", "later@example.com"].map(|email| hubspot.contact_id(email));
    assert_eq!(vids, expected);
}

#[actix_web::test]
async fn a_burst_never_exceeds_the_rate_limit() {
    let hubspot = simulator(Options {
        rate_limit_per_10s: Some(4),
        ..Options::default()
    })
    .await;
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("HUBSPOT_RATE_LIMIT_PER_10S", "4"),
            ("HUBSPOT_BATCH_SIZE", "1"),
            ("RELAY_BATCH_LINGER_MS", "0"),
        ],
    )
    .await;
    for i in 0..5 {
        hubspot.add_contact(&format!("p{i}@example.com"));
        join(
            &app,
            "1",
            &format!("p{i}@example.com"),
            "2026-01-01T10:00:00Z",
        )
        .await;
    }
    wait_until("all delivered", 30, async || {
        hubspot.attendance().len() == 5
    })
    .await;
    let calls = hubspot.calls();
    assert!(
        calls.len() > 4,
        "the burst needs more calls than one window allows"
    );
    assert_eq!(
        hubspot.rate_limited(),
        0,
        "HubSpot never had to refuse a call"
    );
    crate::helpers::assert_within_limit(&calls, 4);
}

#[actix_web::test]
async fn server_errors_rate_limits_and_timeouts_are_retried_until_delivered() {
    let hubspot = simulator(Options::default()).await;
    hubspot.add_contact("jill@example.com");
    hubspot.fail_next(Operation::AttendanceCreate, Fault::status(503));
    hubspot.fail_next(
        Operation::AttendanceCreate,
        // Longer than the second attempt's backoff (at most 2 s), so only
        // honouring it explains the wait.
        Fault::status(429).with_header("Retry-After", "3"),
    );
    hubspot.fail_next(
        Operation::AttendanceCreate,
        Fault::status(200).delayed(Duration::from_secs(3)),
    );
    let app = spawn_forwarding_app(&hubspot, &[("HUBSPOT_REQUEST_TIMEOUT_MS", "300")]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;
    wait_settled(&app, 1).await;

    assert_eq!(
        status_of(&app, "jill@example.com").await.0,
        RecordStatus::Delivered
    );
    assert_eq!(hubspot.attendance().len(), 1);
    let creates = creates(&hubspot);
    assert_eq!(creates.len(), 4);
    assert!(
        creates[2].at >= creates[1].at + Duration::from_secs(3),
        "Retry-After honoured"
    );
    let metrics = app.metrics().await;
    for status in ["503", "429", "error", "200"] {
        assert_eq!(
            metric(
                &metrics,
                "relay_hubspot_requests_total",
                &[("operation", "attendance_create"), ("status", status)]
            ),
            Some(1.0),
            "{status}"
        );
    }
}

#[actix_web::test]
async fn per_input_errors_settle_each_input_on_its_own() {
    let hubspot = simulator(Options::default()).await;
    let jill = hubspot.add_contact("jill@example.com");
    let jack = hubspot.add_contact("jack@example.com");
    let refusal = |vid: i64| {
        Fault::status(200).with_body(json!({
            "status": "COMPLETE", "startedAt": "2026-01-01T10:00:00Z", "completedAt": "2026-01-01T10:00:01Z",
            "results": [], "numErrors": 1,
            "errors": [{"status": "error", "category": "OBJECT_NOT_FOUND", "message": format!("Contact {vid} not found"),
                        "context": {"vids": [vid.to_string()]}, "errors": [], "links": {}}]
        }))
    };
    // Refused twice: once is taken for a stale cached id and looked up again.
    hubspot.fail_next(Operation::AttendanceCreate, refusal(jack));
    hubspot.fail_next(Operation::AttendanceCreate, refusal(jack));
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_BATCH_LINGER_MS", "300")]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;
    join(&app, "1", "jack@example.com", "2026-01-01T10:00:00Z").await;
    wait_settled(&app, 2).await;

    assert_eq!(
        status_of(&app, "jill@example.com").await.0,
        RecordStatus::Delivered
    );
    let (status, reason) = status_of(&app, "jack@example.com").await;
    assert_eq!(status, RecordStatus::Dead);
    assert!(
        reason
            .unwrap()
            .contains(&format!("Contact {jack} not found"))
    );
    // The faults named only jack, so jill was sent again until HubSpot took her.
    let vids: Vec<i64> = hubspot.attendance().iter().map(|a| a.vid).collect();
    assert_eq!(vids, vec![jill]);
    let metrics = app.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "relay_records_total",
            &[("state", "attend"), ("outcome", "dead_lettered")]
        ),
        Some(1.0)
    );
}

#[actix_web::test]
async fn a_400_for_one_input_does_not_sink_its_batch() {
    let hubspot = simulator(Options::default()).await;
    let emails: Vec<String> = (0..4).map(|i| format!("p{i}@example.com")).collect();
    let vids: Vec<i64> = emails.iter().map(|e| hubspot.add_contact(e)).collect();
    // First a 400 naming the third input, then one naming nothing (the batch is halved).
    hubspot.fail_next(
        Operation::AttendanceCreate,
        Fault::status(400).with_body(json!({
            "status": "error", "category": "VALIDATION_ERROR", "message": "Invalid input",
            "correlationId": "aeb5f871-7f07-4993-9211-075dc63e7cbf",
            "errors": [{"message": "vid does not exist", "in": "inputs[2].vid"}]
        })),
    );
    hubspot.fail_next(Operation::AttendanceCreate, Fault::status(400));
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_BATCH_LINGER_MS", "300")]).await;
    for email in &emails {
        join(&app, "1", email, "2026-01-01T10:00:00Z").await;
    }
    wait_settled(&app, 4).await;

    let named = creates(&hubspot)[0].body["inputs"][2]["vid"]
        .as_i64()
        .unwrap();
    let dead: Vec<_> = app
        .records()
        .await
        .into_iter()
        .filter(|r| r.status == RecordStatus::Dead)
        .collect();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("vid does not exist")
    );
    let delivered: Vec<i64> = hubspot.attendance().iter().map(|a| a.vid).collect();
    assert_eq!(delivered.len(), 3);
    assert!(!delivered.contains(&named) && vids.contains(&named));
    // 4 inputs → 400 naming one → 3 → 400 naming none → halves of 1 and 2.
    let sizes: Vec<usize> = creates(&hubspot)
        .iter()
        .map(|c| c.body["inputs"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes.len(), 4);
    assert_eq!(&sizes[..2], &[4, 3]);
}

#[actix_web::test]
async fn a_refused_credential_pauses_forwarding_and_keeps_the_records() {
    let hubspot = simulator(Options::default()).await;
    hubspot.add_contact("jill@example.com");
    hubspot.fail_next(Operation::ContactsRead, Fault::status(401));
    hubspot.fail_next(Operation::ContactsRead, Fault::status(403));
    let app = spawn_forwarding_app(&hubspot, &[]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;

    wait_until("forwarding pauses", 10, async || {
        metric(&app.metrics().await, "relay_forwarding_paused", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        status_of(&app, "jill@example.com").await.0,
        RecordStatus::Pending
    );
    let (status, _) = app.get(&format!("{}/readyz", app.public)).await;
    assert_eq!(
        status.as_u16(),
        200,
        "a HubSpot problem never makes the gateway unready"
    );

    wait_settled(&app, 1).await;
    assert_eq!(
        status_of(&app, "jill@example.com").await.0,
        RecordStatus::Delivered
    );
    assert_eq!(
        metric(&app.metrics().await, "relay_forwarding_paused", &[]),
        Some(0.0)
    );
}

#[actix_web::test]
async fn without_a_credential_webhooks_are_stored_and_forwarding_waits() {
    let hubspot = simulator(Options::default()).await;
    let app = spawn_forwarding_app(&hubspot, &[("HUBSPOT_ACCESS_TOKEN", "")]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;
    wait_until("forwarding pauses", 10, async || {
        metric(&app.metrics().await, "relay_forwarding_paused", &[]) == Some(1.0)
    })
    .await;
    assert!(hubspot.calls().is_empty());
    assert_eq!(
        status_of(&app, "jill@example.com").await.0,
        RecordStatus::Pending
    );
}

#[actix_web::test]
async fn a_missing_event_is_created_when_allowed_and_dead_lettered_otherwise() {
    for upsert in [true, false] {
        let hubspot = simulator(Options {
            known_events: Some(Vec::new()),
            ..Options::default()
        })
        .await;
        let app = spawn_forwarding_app(
            &hubspot,
            &[("RELAY_UPSERT_EVENTS", if upsert { "true" } else { "false" })],
        )
        .await;
        join(&app, "9001", "jill@example.com", "2026-01-01T10:00:00Z").await;
        wait_settled(&app, 1).await;
        let (status, reason) = status_of(&app, "jill@example.com").await;
        let upserts: Vec<_> = hubspot
            .calls()
            .into_iter()
            .filter(|c| c.operation == Operation::EventsUpsert)
            .collect();
        if upsert {
            assert_eq!(status, RecordStatus::Delivered);
            assert_eq!(upserts.len(), 1);
            let event = &upserts[0].body["inputs"][0];
            assert_eq!(
                (
                    &event["externalEventId"],
                    &event["externalAccountId"],
                    &event["eventName"],
                    &event["eventOrganizer"]
                ),
                (
                    &json!("9001"),
                    &json!("zoom-account-1"),
                    &json!("Launch webinar"),
                    &json!("Zoom")
                )
            );
            assert_eq!(event["startDateTime"], json!("2026-01-01T10:00:00Z"));
            assert_eq!(hubspot.attendance().len(), 1);
        } else {
            assert_eq!(status, RecordStatus::Dead);
            assert!(reason.unwrap().contains("RELAY_UPSERT_EVENTS=false"));
            assert!(upserts.is_empty());
        }
    }
}

#[actix_web::test]
async fn unknown_contacts_are_dead_letters_when_creating_them_is_off() {
    let hubspot = simulator(Options::default()).await;
    hubspot.add_contact("known@example.com");
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_CREATE_CONTACTS", "false")]).await;
    join(&app, "1", "known@example.com", "2026-01-01T10:00:00Z").await;
    join(&app, "1", "stranger@example.com", "2026-01-01T10:00:00Z").await;
    wait_settled(&app, 2).await;
    assert_eq!(
        status_of(&app, "known@example.com").await.0,
        RecordStatus::Delivered
    );
    let (status, reason) = status_of(&app, "stranger@example.com").await;
    assert_eq!(status, RecordStatus::Dead);
    assert!(reason.unwrap().contains("RELAY_CREATE_CONTACTS=false"));
    assert!(
        !hubspot
            .calls()
            .iter()
            .any(|c| c.operation == Operation::ContactsUpsert)
    );
}

#[actix_web::test]
async fn records_past_the_maximum_age_become_dead_letters_instead_of_retrying() {
    let hubspot = simulator(Options::default()).await;
    hubspot.add_contact("jill@example.com");
    hubspot.fail_next(Operation::AttendanceCreate, Fault::status(502));
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_MAX_RECORD_AGE_SECS", "0")]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;
    wait_settled(&app, 1).await;
    let (status, reason) = status_of(&app, "jill@example.com").await;
    assert_eq!(status, RecordStatus::Dead);
    assert!(reason.unwrap().contains("RELAY_MAX_RECORD_AGE_SECS"));
    assert_eq!(creates(&hubspot).len(), 1);
}

#[actix_web::test]
async fn two_groups_of_one_unknown_event_create_it_once() {
    let hubspot = simulator(Options {
        known_events: Some(Vec::new()),
        ..Options::default()
    })
    .await;
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_UPSERT_EVENTS", "true")]).await;
    join(&app, "9001", "jill@example.com", "2026-01-01T10:00:00Z").await;
    let registration = json!({
        "event": "webinar.registration_created", "event_ts": 1_767_261_000_000_i64,
        "payload": {"account_id": "zoom-account-1", "object": {"id": 9001, "topic": "Launch webinar",
            "registrant": {"email": "jack@example.com", "status": "approved"}}}
    });
    let (status, _) = app.post_zoom(registration.to_string().as_bytes()).await;
    assert_eq!(status.as_u16(), 200);
    wait_settled(&app, 2).await;
    let upserts = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::EventsUpsert)
        .count();
    assert_eq!(upserts, 1, "register and attend share the event's creation");
    assert_eq!(hubspot.attendance().len(), 2);
}

#[actix_web::test]
async fn a_403_that_is_not_about_scopes_settles_its_batch_without_pausing() {
    let hubspot = simulator(Options::default()).await;
    hubspot.add_contact("jill@example.com");
    hubspot.fail_next(
        Operation::AttendanceCreate,
        Fault::status(403).with_body(json!({
            "status": "error", "category": "FORBIDDEN", "message": "This event is locked",
            "correlationId": "aeb5f871-7f07-4993-9211-075dc63e7cbf"
        })),
    );
    let app = spawn_forwarding_app(&hubspot, &[]).await;
    join(&app, "1", "jill@example.com", "2026-01-01T10:00:00Z").await;
    wait_settled(&app, 1).await;
    let (status, reason) = status_of(&app, "jill@example.com").await;
    assert_eq!(status, RecordStatus::Dead);
    assert!(reason.unwrap().contains("This event is locked"));
    assert_eq!(
        metric(&app.metrics().await, "relay_forwarding_paused", &[]),
        Some(0.0)
    );
}

#[actix_web::test]
async fn a_refused_contact_look_up_is_narrowed_to_the_contact_it_names() {
    let hubspot = simulator(Options::default()).await;
    let emails: Vec<String> = (0..8).map(|i| format!("p{i}@example.com")).collect();
    for email in &emails {
        hubspot.add_contact(email);
    }
    hubspot.fail_next(
        Operation::ContactsRead,
        Fault::status(400).with_body(json!({
            "status": "error", "category": "VALIDATION_ERROR", "message": "Invalid email",
            "correlationId": "aeb5f871-7f07-4993-9211-075dc63e7cbf",
            "errors": [{"message": "not an email", "in": "inputs[3].id"}]
        })),
    );
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_BATCH_LINGER_MS", "300")]).await;
    for email in &emails {
        join(&app, "1", email, "2026-01-01T10:00:00Z").await;
    }
    wait_settled(&app, 8).await;
    let dead: Vec<_> = app
        .records()
        .await
        .into_iter()
        .filter(|r| r.status == RecordStatus::Dead)
        .collect();
    assert_eq!(dead.len(), 1, "only the contact HubSpot named");
    assert!(dead[0].last_error.as_deref().unwrap().contains("look up"));
    assert_eq!(hubspot.attendance().len(), 7);
    let reads = hubspot
        .calls()
        .into_iter()
        .filter(|c| c.operation == Operation::ContactsRead)
        .count();
    assert_eq!(
        reads, 2,
        "the refusal named its input: one more read for the rest"
    );
}
