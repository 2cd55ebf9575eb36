//! A webinar's end completes its marketing event: after the attendance it
//! covers, once per end, again after a late leave, across a restart.

use std::time::Duration;

use attendance_relay::{
    demo::simulator::{Attendance, Call, Fault, Options, Simulator},
    hubspot::Operation,
    record::State,
    store::RecordStatus,
};
use serde_json::{Value, json};

use crate::helpers::{StoreDir, metric, spawn_forwarding_app, spawn_forwarding_app_in, wait_until};

const ACCOUNT: &str = "zoom-account-1";
const WEBINAR: &str = "900";

fn zoom(event: &str, object: Value) -> Vec<u8> {
    json!({
        "event": event,
        "event_ts": 1_767_265_200_000_i64,
        "payload": { "account_id": ACCOUNT, "object": object },
    })
    .to_string()
    .into_bytes()
}

fn webinar(extra: Value) -> Value {
    let mut object = json!({
        "id": WEBINAR, "uuid": "4444AAAiAAAAAiAiAiiAii==", "host_id": "x1yCzABCDEfg23HiJKl4mN",
        "topic": "Launch webinar", "type": 5, "start_time": "2026-01-01T10:00:00Z",
        "duration": 60, "timezone": "UTC",
    });
    object
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    object
}

/// `webinar.participant_joined` (`left` false) or `_left` of `email` at `at` (10:MM).
fn session(left: bool, email: &str, at: &str) -> Vec<u8> {
    let (event, field) = if left {
        ("webinar.participant_left", "leave_time")
    } else {
        ("webinar.participant_joined", "join_time")
    };
    let participant = json!({ "user_id": email, "user_name": email, "email": email, field: at });
    zoom(event, webinar(json!({ "participant": participant })))
}

fn ended(end: &str) -> Vec<u8> {
    zoom(
        "webinar.ended",
        webinar(json!({ "end_time": end, "host_email": "host@example.com" })),
    )
}

fn completes(calls: &[Call]) -> Vec<usize> {
    calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.operation == Operation::EventsComplete && c.status == 200)
        .map(|(i, _)| i)
        .collect()
}

/// Index of the answered `create` call that carried an input with `leftAt`.
fn create_with(calls: &[Call], left_at: &str) -> usize {
    calls
        .iter()
        .position(|c| {
            c.operation == Operation::AttendanceCreate
                && c.status == 200
                && c.body["inputs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|input| input["properties"]["leftAt"] == left_at)
        })
        .unwrap_or_else(|| panic!("no create carried leftAt {left_at}"))
}

fn sessions_of(attendance: &[Attendance], vid: i64) -> Vec<(Option<&str>, Option<&str>)> {
    let mut sessions: Vec<_> = attendance
        .iter()
        .filter(|a| a.vid == vid && a.state == "attend")
        .map(|a| {
            (
                a.properties.get("joinedAt").map(String::as_str),
                a.properties.get("leftAt").map(String::as_str),
            )
        })
        .collect();
    sessions.sort();
    sessions
}

async fn post_all(app: &crate::helpers::TestApp, bodies: &[Vec<u8>]) {
    for body in bodies {
        let (status, answer) = app.post_zoom(body).await;
        assert_eq!(status.as_u16(), 200, "{answer}");
    }
}

#[actix_web::test]
async fn a_webinar_is_completed_after_its_attendance_and_again_after_a_late_leave() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_COMPLETE_DELAY_SECS", "1")]).await;
    post_all(
        &app,
        &[
            session(false, "a@example.com", "2026-01-01T10:00:00Z"),
            session(false, "b@example.com", "2026-01-01T10:05:00Z"),
            session(true, "a@example.com", "2026-01-01T10:20:00Z"),
            // a drops out and comes back
            session(false, "a@example.com", "2026-01-01T10:30:00Z"),
            session(false, "c@example.com", "2026-01-01T10:40:00Z"),
            session(true, "a@example.com", "2026-01-01T10:50:00Z"),
            session(true, "b@example.com", "2026-01-01T10:55:00Z"),
            ended("2026-01-01T11:00:00Z"),
        ],
    )
    .await;
    let (status, answer) = app.post_zoom(&ended("2026-01-01T11:00:00Z")).await;
    assert_eq!(
        (status.as_u16(), answer),
        (200, json!({"accepted": 0, "duplicates": 1, "ignored": 0})),
        "Zoom's retry of the end is a duplicate"
    );

    wait_until("the event is completed", 20, async || {
        !completes(&hubspot.calls()).is_empty()
    })
    .await;
    let calls = hubspot.calls();
    let complete = &calls[completes(&calls)[0]];
    assert_eq!(
        complete.path,
        "/marketing/marketing-events/2026-03/events/900/complete?externalAccountId=zoom-account-1"
    );
    assert_eq!(
        complete.body,
        json!({"startDateTime": "2026-01-01T10:00:00Z", "endDateTime": "2026-01-01T11:00:00Z"})
    );
    let last_create = calls
        .iter()
        .rposition(|c| c.operation == Operation::AttendanceCreate)
        .unwrap();
    assert!(
        last_create < completes(&calls)[0],
        "every attendance create came before the completion"
    );
    // Each session is its own input, the leave carrying its own join.
    let a = hubspot.contact_id("a@example.com").unwrap();
    assert_eq!(
        sessions_of(&hubspot.attendance(), a),
        vec![
            (Some("2026-01-01T10:00:00Z"), None),
            (Some("2026-01-01T10:00:00Z"), Some("2026-01-01T10:20:00Z")),
            (Some("2026-01-01T10:30:00Z"), None),
            (Some("2026-01-01T10:30:00Z"), Some("2026-01-01T10:50:00Z")),
        ]
    );

    // Once, however long it waits.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(completes(&hubspot.calls()).len(), 1, "completed once");

    // c's leave comes after the completion: forwarded, then completed again.
    post_all(
        &app,
        &[session(true, "c@example.com", "2026-01-01T11:00:00Z")],
    )
    .await;
    wait_until("the event is completed again", 20, async || {
        completes(&hubspot.calls()).len() == 2
    })
    .await;
    let calls = hubspot.calls();
    assert!(
        create_with(&calls, "2026-01-01T11:00:00Z") < completes(&calls)[1],
        "the late leave before the second completion"
    );
    let event = hubspot.event(ACCOUNT, WEBINAR).unwrap();
    assert_eq!(event.completions, 2);
    assert_eq!(event.end.as_deref(), Some("2026-01-01T11:00:00Z"));
    wait_until("the second completion is settled", 10, async || {
        let records = app.records().await;
        records.iter().all(|r| r.status == RecordStatus::Delivered)
    })
    .await;
    let retried = app
        .records()
        .await
        .into_iter()
        .filter(|r| r.attempts > 1)
        .count();
    assert_eq!(
        retried, 0,
        "a contact in a batch twice is sent twice at once"
    );
    let metrics = app.metrics().await;
    let count = |outcome| {
        metric(
            &metrics,
            "relay_hubspot_requests_total",
            &[("operation", "complete"), ("status", outcome)],
        )
    };
    assert_eq!(count("200"), Some(2.0));
    assert_eq!(
        metric(
            &metrics,
            "relay_records_total",
            &[("state", "complete"), ("outcome", "delivered")]
        ),
        Some(2.0)
    );
}

#[actix_web::test]
async fn a_completion_waits_while_its_attendance_is_retried() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    for _ in 0..3 {
        hubspot.fail_next(Operation::AttendanceCreate, Fault::status(503));
    }
    // No grace at all: only the unsettled attendance holds the completion back.
    let app = spawn_forwarding_app(&hubspot, &[("RELAY_COMPLETE_DELAY_SECS", "0")]).await;
    post_all(
        &app,
        &[
            session(false, "a@example.com", "2026-01-01T10:00:00Z"),
            session(true, "a@example.com", "2026-01-01T10:50:00Z"),
            ended("2026-01-01T11:00:00Z"),
        ],
    )
    .await;
    wait_until("the event is completed", 30, async || {
        !completes(&hubspot.calls()).is_empty()
    })
    .await;
    let calls = hubspot.calls();
    let failed = calls
        .iter()
        .filter(|c| c.operation == Operation::AttendanceCreate && c.status == 503)
        .count();
    assert_eq!(failed, 3, "the attendance was retried");
    assert!(create_with(&calls, "2026-01-01T10:50:00Z") < completes(&calls)[0]);
}

#[actix_web::test]
async fn a_completion_stored_before_a_restart_is_sent_once_after_it() {
    let hubspot = Simulator::start(Options::default()).await.unwrap();
    let dir = StoreDir::new();
    let grace = [("RELAY_COMPLETE_DELAY_SECS", "2")];
    let app = spawn_forwarding_app_in(dir.clone(), &hubspot, &grace).await;
    post_all(
        &app,
        &[
            session(false, "a@example.com", "2026-01-01T10:00:00Z"),
            session(true, "a@example.com", "2026-01-01T10:50:00Z"),
        ],
    )
    .await;
    wait_until("the attendance is delivered", 20, async || {
        hubspot.attendance().len() == 2
    })
    .await;
    post_all(&app, &[ended("2026-01-01T11:00:00Z")]).await;
    // Stopped within the grace: the completion is stored, not yet sent.
    let dir = app.stop().await;
    assert!(completes(&hubspot.calls()).is_empty());

    let app = spawn_forwarding_app_in(dir, &hubspot, &grace).await;
    wait_until("the event is completed", 20, async || {
        !completes(&hubspot.calls()).is_empty()
    })
    .await;
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(completes(&hubspot.calls()).len(), 1);
    assert_eq!(hubspot.attendance().len(), 2, "nothing sent twice");
    let completion = app
        .records()
        .await
        .into_iter()
        .find(|r| r.record.state == State::Complete)
        .unwrap();
    assert_eq!(completion.status, RecordStatus::Delivered);
}

#[actix_web::test]
async fn an_event_the_gateway_creates_carries_the_webinar_s_topic_start_and_end() {
    let hubspot = Simulator::start(Options {
        known_events: Some(Vec::new()),
        ..Options::default()
    })
    .await
    .unwrap();
    let app = spawn_forwarding_app(
        &hubspot,
        &[
            ("RELAY_UPSERT_EVENTS", "true"),
            ("RELAY_COMPLETE_DELAY_SECS", "0"),
        ],
    )
    .await;
    // Only the end reaches the gateway: the completion creates the event.
    post_all(&app, &[ended("2026-01-01T11:05:00Z")]).await;
    wait_until("the event is completed", 20, async || {
        !completes(&hubspot.calls()).is_empty()
    })
    .await;
    let event = hubspot.event(ACCOUNT, WEBINAR).expect("created");
    assert_eq!(event.name.as_deref(), Some("Launch webinar"));
    assert_eq!(event.organizer.as_deref(), Some("Zoom"));
    assert_eq!(event.start.as_deref(), Some("2026-01-01T10:00:00Z"));
    assert_eq!(event.end.as_deref(), Some("2026-01-01T11:05:00Z"));
    assert_eq!(event.completions, 1, "and marked completed");
    let calls = hubspot.calls();
    let operations: Vec<_> = calls.iter().map(|c| (c.operation, c.status)).collect();
    assert_eq!(
        operations,
        vec![
            (Operation::EventsComplete, 404),
            (Operation::EventsUpsert, 200),
            (Operation::EventsComplete, 200),
        ]
    );
}
